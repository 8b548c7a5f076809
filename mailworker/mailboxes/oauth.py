"""Access tokens for XOAUTH2 logins (IMAP, POP3, SMTP), cached in the database.

A token is used until shortly before it expires (OAUTH_ACCESS_TOKEN_MARGIN_SECONDS), then
refreshed. Workers that find it stale at the same moment queue on the integration's row
(select_for_update) and look again once they hold it: the first refreshes, the others take
its token, so one refresh token is never redeemed twice at once (Microsoft rotates them).

A refusal that needs an admin marks the integration "needs reconnect" and notifies admins
once; it is then not asked again until an admin connects, so it never loops. A provider
that cannot be reached is an ordinary failure of this pass.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.models import EmailIntegration
from integrations.oauth.errors import OAuthSetupError, ReconnectNeeded, TokenEndpointUnavailable
from integrations.oauth.services import (
    mark_needs_reconnect,
    new_access_token,
    provider_name,
    store_access_token,
)
from mailworker.mailboxes.base import MailboxAuthError, MailboxError

logger = logging.getLogger(__name__)


class NeedsReconnect(MailboxAuthError):
    """The integration must be connected again by an admin; nothing is tried until then."""


def xoauth2_string(user: str, access_token: str) -> str:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format), not yet base64."""
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


def xoauth2_base64(user: str, access_token: str) -> str:
    return base64.b64encode(xoauth2_string(user, access_token).encode()).decode("ascii")


def _is_fresh(integration: EmailIntegration) -> bool:
    expires_at = integration.oauth_access_token_expires_at
    if not integration.oauth_access_token or expires_at is None:
        return False
    margin = timedelta(seconds=settings.OAUTH_ACCESS_TOKEN_MARGIN_SECONDS)
    return timezone.now() + margin < expires_at


def _needs_reconnect_error(integration: EmailIntegration) -> NeedsReconnect:
    return NeedsReconnect(
        f"Needs reconnect: {integration.needs_reconnect_reason or 'the sign-in was refused.'}"
    )


def access_token_for(integration: EmailIntegration) -> str:
    """A valid access token for the integration's mailbox.

    Raises NeedsReconnect (an admin must connect again) or MailboxError (try again later,
    or fix the settings the message names).
    """
    if integration.needs_reconnect:
        raise _needs_reconnect_error(integration)
    if _is_fresh(integration):
        return integration.oauth_access_token
    refused: ReconnectNeeded | None = None
    with transaction.atomic():
        # Lock the row, then read it again: another worker may have refreshed while we
        # waited, or the provider may have refused it already.
        current = EmailIntegration.objects.select_for_update().get(pk=integration.pk)
        if current.needs_reconnect:
            _copy_token_state(current, integration)
            raise _needs_reconnect_error(current)
        if _is_fresh(current):
            _copy_token_state(current, integration)
            return current.oauth_access_token
        try:
            grant = new_access_token(current)
        except ReconnectNeeded as exc:
            # Recorded in this transaction and not raised inside it, or the mark would
            # roll back with it.
            refused = exc
            mark_needs_reconnect(integration=current, reason=str(exc))
            _notify_admins(current)
        except TokenEndpointUnavailable as exc:
            raise MailboxError(str(exc)) from exc
        except OAuthSetupError as exc:
            raise MailboxAuthError(str(exc)) from exc
        else:
            store_access_token(integration=current, grant=grant)
            logger.info("integration %s: access token refreshed", integration.name)
        _copy_token_state(current, integration)
    if refused is not None:
        logger.warning("integration %s needs reconnect: %s", integration.name, refused)
        raise _needs_reconnect_error(integration) from refused
    return integration.oauth_access_token


def _notify_admins(integration: EmailIntegration) -> None:
    # mailworker.health queues through the outbox, which imports the SMTP transport, which
    # imports this module: import at call time.
    from mailworker.health import notify_needs_reconnect

    notify_needs_reconnect(integration=integration, provider=provider_name(integration))


def _copy_token_state(source: EmailIntegration, target: EmailIntegration) -> None:
    for name in (
        "oauth_access_token",
        "oauth_access_token_expires_at",
        "oauth_refresh_token",
        "needs_reconnect_reason",
        "needs_reconnect_since",
        "needs_reconnect_notified_at",
    ):
        setattr(target, name, getattr(source, name))


def expire_access_token(integration: EmailIntegration, token: str) -> None:
    """The server refused a token we held for valid (revoked early, a clock ahead of ours):
    treat it as expired, so the next `access_token_for` refreshes instead of sending it again.
    Only if it is still the stored one: another worker may have refreshed meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        current = EmailIntegration.objects.select_for_update().get(pk=integration.pk)
        if current.oauth_access_token == token:
            EmailIntegration.objects.filter(pk=integration.pk).update(
                oauth_access_token_expires_at=now
            )
            current.oauth_access_token_expires_at = now
        _copy_token_state(current, integration)


def log_in_with_token(integration: EmailIntegration, log_in) -> None:
    """Call `log_in(token)`; when the server refuses a cached token (it may have been
    revoked before its expiry), refresh once and try again. `log_in` raises
    MailboxAuthError when refused."""
    token = access_token_for(integration)
    try:
        log_in(token)
    except NeedsReconnect:
        raise
    except MailboxAuthError:
        expire_access_token(integration, token)
        log_in(access_token_for(integration))
