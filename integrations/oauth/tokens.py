"""Access tokens for the mail engine's logins (IMAP, POP3, SMTP XOAUTH2, Microsoft Graph),
cached in the integration's OAuthGrant.

A token is used until shortly before it expires (OAUTH_ACCESS_TOKEN_MARGIN_SECONDS), then
refreshed. Workers that find it stale at the same moment queue on the integration's row
(select_for_update) and look again once they hold it: the first refreshes, the others take
its token, so one refresh token is never redeemed twice at once (Microsoft rotates them).

A refusal that needs an admin marks the grant "needs reconnect" and sends
`integrations.signals.needs_reconnect` once (the mail engine tells admins); it is then not
asked again until an admin connects, so it never loops. A provider that cannot be reached
is an ordinary failure of this login (TokenEndpointUnavailable).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.models import EmailIntegration, OAuthGrant
from integrations.oauth.errors import ReconnectNeeded
from integrations.oauth.services import mark_needs_reconnect, new_access_token, store_access_token

logger = logging.getLogger(__name__)


def _is_fresh(grant: OAuthGrant) -> bool:
    expires_at = grant.access_token_expires_at
    if not grant.access_token or expires_at is None:
        return False
    margin = timedelta(seconds=settings.OAUTH_ACCESS_TOKEN_MARGIN_SECONDS)
    return timezone.now() + margin < expires_at


def needs_reconnect_error(integration: EmailIntegration) -> ReconnectNeeded:
    reason = integration.grant.needs_reconnect_reason or "the sign-in was refused."
    return ReconnectNeeded(f"Needs reconnect: {reason}")


def _locked(integration: EmailIntegration) -> EmailIntegration:
    """The integration's row, locked until the transaction ends, with its grant read again
    (another worker may have refreshed it while we waited)."""
    current = EmailIntegration.objects.select_for_update().get(pk=integration.pk)
    # Read after the lock: a grant read with the row would be the one before the wait.
    current.oauth_grant = OAuthGrant.objects.filter(
        integration_id=integration.pk
    ).first() or OAuthGrant(integration=current)
    return current


def _share_grant(source: EmailIntegration, target: EmailIntegration) -> None:
    target.oauth_grant = source.grant


def access_token_for(integration: EmailIntegration) -> str:
    """A valid access token for the integration's mailbox.

    Raises ReconnectNeeded (an admin must connect again), TokenEndpointUnavailable (try
    again later) or OAuthSetupError (fix the settings the message names).
    """
    if integration.needs_reconnect:
        raise needs_reconnect_error(integration)
    if _is_fresh(integration.grant):
        return integration.grant.access_token
    refused: ReconnectNeeded | None = None
    with transaction.atomic():
        current = _locked(integration)
        if current.needs_reconnect:
            _share_grant(current, integration)
            raise needs_reconnect_error(current)
        if _is_fresh(current.grant):
            _share_grant(current, integration)
            return current.grant.access_token
        try:
            grant = new_access_token(current)
        except ReconnectNeeded as exc:
            # Recorded in this transaction and not raised inside it, or the mark would
            # roll back with it.
            refused = exc
            mark_needs_reconnect(integration=current, reason=str(exc))
        else:
            store_access_token(integration=current, grant=grant)
            logger.info("integration %s: access token refreshed", integration.name)
        _share_grant(current, integration)
    if refused is not None:
        logger.warning("integration %s needs reconnect: %s", integration.name, refused)
        raise needs_reconnect_error(integration) from refused
    return integration.grant.access_token


def expire_access_token(integration: EmailIntegration, token: str) -> None:
    """The server refused a token we held for valid (revoked early, a clock ahead of ours):
    treat it as expired, so the next `access_token_for` refreshes instead of sending it again.
    Only if it is still the stored one: another worker may have refreshed meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        current = _locked(integration)
        if current.grant.pk and current.grant.access_token == token:
            OAuthGrant.objects.filter(pk=current.grant.pk).update(access_token_expires_at=now)
            current.grant.access_token_expires_at = now
        _share_grant(current, integration)
