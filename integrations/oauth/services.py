"""Connecting an integration to its provider, and keeping what the provider gave.

Tokens are the integration's OAuthGrant. Writes go through `update()` on that row, not
`save()` of a copy read earlier: two workers may refresh, an admin may connect, at once.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from django.db import transaction
from django.utils import timezone

from integrations import signals
from integrations.models import EmailIntegration, IncomingProtocol, OAuthGrant
from integrations.oauth import google, microsoft
from integrations.oauth.errors import ConnectRefused, OAuthSetupError, ReconnectNeeded
from integrations.oauth.grants import TokenGrant

PROVIDERS: dict[str, ModuleType] = {
    IncomingProtocol.MICROSOFT365: microsoft,
    IncomingProtocol.MICROSOFT_GRAPH: microsoft,
    IncomingProtocol.GOOGLE: google,
}
PROVIDER_NAMES = {
    IncomingProtocol.MICROSOFT365: "Microsoft",
    IncomingProtocol.MICROSOFT_GRAPH: "Microsoft",
    IncomingProtocol.GOOGLE: "Google",
}


def provider_name(integration: EmailIntegration) -> str:
    return PROVIDER_NAMES.get(integration.incoming_protocol, "the provider")


def _provider(integration: EmailIntegration) -> ModuleType:
    module = PROVIDERS.get(integration.incoming_protocol)
    if module is None:
        raise OAuthSetupError(
            f"The integration “{integration.name}” does not use OAuth 2.0: choose Microsoft 365 "
            "or Google as its protocol."
        )
    return module


def _require_mailbox(integration: EmailIntegration) -> str:
    mailbox = integration.oauth_mailbox
    if "@" not in mailbox:
        raise OAuthSetupError(
            "Enter the mailbox's address as its username and Apply before connecting: the "
            "token must belong to that mailbox."
        )
    return mailbox


# The connect flows ----------------------------------------------------------------------


def begin_connect(*, integration: EmailIntegration, redirect_uri: str) -> dict[str, Any]:
    """Start the browser sign-in. Returns what the session keeps until the callback: the
    provider's flow (state, PKCE verifier, nonce) bound to this integration and its app."""
    _require_mailbox(integration)
    flow = _provider(integration).begin_authorization(integration, redirect_uri=redirect_uri)
    return {
        "integration_id": integration.pk,
        "provider": integration.incoming_protocol,
        "client_id": integration.oauth_client_id.strip(),
        "flow": flow,
    }


def finish_connect(
    *, integration: EmailIntegration, pending: dict[str, Any], response: dict[str, str]
) -> TokenGrant:
    """Redeem the code the browser brought back, check whose token it is, and store it."""
    if (
        pending.get("integration_id") != integration.pk
        or pending.get("provider") != integration.incoming_protocol
        or pending.get("client_id") != integration.oauth_client_id.strip()
    ):
        raise ConnectRefused(
            "The integration's provider or client id changed during the sign-in: press "
            "Connect again."
        )
    mailbox = _require_mailbox(integration)
    grant = _provider(integration).redeem_authorization(
        integration, flow=pending["flow"], response=response
    )
    if grant.account.strip().lower() != mailbox.lower():
        raise ConnectRefused(
            f"You signed in as {grant.account or 'an account without an address'}, but this "
            f"integration reads and sends as {mailbox}. Press Connect again and sign in as "
            f"{mailbox} (in a private window if {provider_name(integration)} keeps you signed "
            "in as another account), or change the username and Apply first. Nothing was "
            "stored."
        )
    store_grant(integration=integration, grant=grant)
    return grant


def connect_app_only(*, integration: EmailIntegration) -> TokenGrant:
    """App-only access: get a token now, so a wrong secret or a missing grant shows at once."""
    mailbox = _require_mailbox(integration)
    grant = _provider(integration).app_only_token(integration)
    grant = TokenGrant(
        access_token=grant.access_token, expires_at=grant.expires_at, account=mailbox
    )
    store_grant(integration=integration, grant=grant)
    return grant


def disconnect(*, integration: EmailIntegration) -> None:
    """Forget the tokens (the app stays registered at the provider)."""
    _update(integration, _cleared_tokens())


# Keeping tokens ---------------------------------------------------------------------------


def new_access_token(integration: EmailIntegration) -> TokenGrant:
    """Ask the provider for a fresh access token: with the refresh token (delegated) or the
    app's own credentials (app-only). Raises ReconnectNeeded, TokenEndpointUnavailable or
    OAuthSetupError."""
    provider = _provider(integration)
    if integration.uses_app_only_oauth:
        return provider.app_only_token(integration)
    if not integration.grant.refresh_token:
        raise ReconnectNeeded(
            f"The integration is not connected: press Connect with {provider_name(integration)} "
            "on its page and sign in as the mailbox's user."
        )
    return provider.refresh(integration)


def store_grant(*, integration: EmailIntegration, grant: TokenGrant) -> None:
    """Keep a connect flow's tokens; a (re)connect ends a "needs reconnect". Sends
    `signals.reconnected`: the mail engine starts a new failure streak."""
    values: dict[str, Any] = {
        "access_token": grant.access_token,
        "access_token_expires_at": grant.expires_at,
        "refresh_token": grant.refresh_token,
        "account": grant.account,
        "needs_reconnect_reason": "",
        "needs_reconnect_since": None,
        "needs_reconnect_notified_at": None,
    }
    with transaction.atomic():
        _update(integration, values)
        signals.reconnected.send(sender=OAuthGrant, integration=integration)


def store_access_token(*, integration: EmailIntegration, grant: TokenGrant) -> None:
    """Keep a refreshed access token (and the new refresh token, when the provider rotated
    it: Microsoft does, Google does not)."""
    values: dict[str, Any] = {
        "access_token": grant.access_token,
        "access_token_expires_at": grant.expires_at,
    }
    if grant.refresh_token:
        values["refresh_token"] = grant.refresh_token
    _update(integration, values)


def mark_needs_reconnect(*, integration: EmailIntegration, reason: str) -> None:
    """The provider refused the stored grant: stop using it until an admin connects again.
    The access token goes too, so nothing keeps trying with it. Sends
    `signals.needs_reconnect` once per refusal (until an admin connects again)."""
    values: dict[str, Any] = {
        "needs_reconnect_reason": reason,
        "access_token": "",
        "access_token_expires_at": None,
    }
    current = integration.grant
    if current.needs_reconnect_since is None:
        values["needs_reconnect_since"] = timezone.now()
    first_notice = current.needs_reconnect_notified_at is None
    if first_notice:
        values["needs_reconnect_notified_at"] = timezone.now()
    with transaction.atomic():
        _update(integration, values)
        if first_notice:
            signals.needs_reconnect.send(
                sender=OAuthGrant,
                integration=integration,
                grant=integration.grant,
                provider=provider_name(integration),
            )


def _cleared_tokens() -> dict[str, Any]:
    return {"access_token": "", "access_token_expires_at": None, "refresh_token": "", "account": ""}


def forget_tokens_of_another_app(*, integration: EmailIntegration) -> None:
    """Before saving the form: tokens belong to one app, tenant, access and mailbox. When an
    admin changes any of these, the stored tokens no longer fit; drop them so the page says
    "not connected" instead of failing later."""
    if integration.pk is None:
        return
    stored = (
        EmailIntegration.objects.filter(pk=integration.pk)
        .values(
            "incoming_protocol",
            "oauth_client_id",
            "oauth_tenant",
            "oauth_access",
            "incoming_username",
            "email_address",
            "outgoing_enabled",
            "outgoing_protocol",
        )
        .first()
    )
    if stored is None:
        return
    before = EmailIntegration(**stored)
    if (
        before.incoming_protocol != integration.incoming_protocol
        # A token has one audience: Graph's, or Outlook's for IMAP, POP3 and SMTP.
        or before.uses_graph_token != integration.uses_graph_token
        or before.oauth_client_id.strip() != integration.oauth_client_id.strip()
        or before.oauth_tenant.strip() != integration.oauth_tenant.strip()
        or before.oauth_access != integration.oauth_access
        or before.oauth_mailbox.lower() != integration.oauth_mailbox.lower()
    ) and OAuthGrant.objects.filter(integration_id=integration.pk).exists():
        _update(integration, _cleared_tokens())


@transaction.atomic
def _update(integration: EmailIntegration, values: dict[str, Any]) -> None:
    """One UPDATE of the integration's grant (created first when it has none), and the
    same values on the grant the caller holds."""
    # Through the model fields (encryption), not raw SQL; update() skips save() and signals.
    grant = integration.grant
    if OAuthGrant.objects.filter(integration_id=integration.pk).update(**values):
        for name, value in values.items():
            setattr(grant, name, value)
    else:  # the first token of this integration
        grant = OAuthGrant.objects.create(integration=integration, **values)
    integration.oauth_grant = grant
