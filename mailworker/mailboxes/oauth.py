"""XOAUTH2 logins of the mail engine: a token from integrations (integrations/oauth/tokens.py),
its errors said in the mailboxes' words.

Integrations keep, refresh and serialise the tokens and say "needs reconnect" by a signal;
this module only asks for one when a transport logs in, and retries once with a fresh one
when the server refuses a token we held for valid.
"""

from __future__ import annotations

from integrations.models import EmailIntegration
from integrations.oauth import tokens
from integrations.oauth.errors import OAuthSetupError, ReconnectNeeded, TokenEndpointUnavailable
from mailworker.mailboxes.base import MailboxAuthError, MailboxError


class NeedsReconnect(MailboxAuthError):
    """The integration must be connected again by an admin; nothing is tried until then."""


def access_token_for(integration: EmailIntegration) -> str:
    """A valid access token for the integration's mailbox.

    Raises NeedsReconnect (an admin must connect again) or MailboxError (try again later,
    or fix the settings the message names).
    """
    try:
        return tokens.access_token_for(integration)
    except ReconnectNeeded as exc:
        raise NeedsReconnect(str(exc)) from exc
    except TokenEndpointUnavailable as exc:
        raise MailboxError(str(exc)) from exc
    except OAuthSetupError as exc:
        raise MailboxAuthError(str(exc)) from exc


def expire_access_token(integration: EmailIntegration, token: str) -> None:
    tokens.expire_access_token(integration, token)


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
