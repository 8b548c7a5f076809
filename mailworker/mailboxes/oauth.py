"""XOAUTH2 logins of the mail engine: a token from integrations (integrations/oauth/tokens.py),
its errors said in the mailboxes' words.

Integrations keep, refresh and serialise the tokens and say "needs reconnect" by a signal;
this module only asks for one when a transport logs in, and retries once with a fresh one
when the server refuses a token we held for valid.
"""

from __future__ import annotations

from integrations.models import EmailIntegration
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.transport import oauth
from mailworker.transport.errors import TransportError, TransportErrorKind


class NeedsReconnect(MailboxAuthError):
    """The integration must be connected again by an admin; nothing is tried until then."""

    default_kind = TransportErrorKind.NEEDS_RECONNECT


def access_token_for(integration: EmailIntegration) -> str:
    """A valid access token for the integration's mailbox.

    Raises NeedsReconnect (an admin must connect again) or MailboxError (try again later,
    or fix the settings the message names).
    """
    try:
        return oauth.access_token_for(integration)
    except TransportError as exc:
        if exc.kind is TransportErrorKind.NEEDS_RECONNECT:
            raise NeedsReconnect(exc.message) from exc
        if exc.kind is TransportErrorKind.AUTHENTICATION:
            raise MailboxAuthError(exc.message) from exc
        raise MailboxError(exc.message, kind=exc.kind, temporary=exc.temporary) from exc


expire_access_token = oauth.expire_access_token


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
