"""OAuth 2.0 access tokens for the transports that log in with one (XOAUTH2 for IMAP, POP3
and SMTP; bearer tokens for Microsoft Graph), in the transports' one error vocabulary.

Integrations keep, refresh and serialise the tokens and say "needs reconnect" by a signal
(integrations/oauth/tokens.py); a transport only asks for one when it logs in.
"""

from __future__ import annotations

from integrations.models import EmailIntegration
from integrations.oauth import tokens
from integrations.oauth.errors import OAuthSetupError, ReconnectNeeded, TokenEndpointUnavailable
from mailworker.transport.errors import TransportError, TransportErrorKind


def access_token_for(integration: EmailIntegration) -> str:
    """A valid access token. Raises TransportError: NEEDS_RECONNECT (an admin must connect
    again), UNREACHABLE (the token endpoint is down: temporary) or AUTHENTICATION (the app's
    settings are refused: fix what the message names)."""
    try:
        return tokens.access_token_for(integration)
    except ReconnectNeeded as exc:
        raise TransportError(TransportErrorKind.NEEDS_RECONNECT, str(exc)) from exc
    except TokenEndpointUnavailable as exc:
        raise TransportError(TransportErrorKind.UNREACHABLE, str(exc), temporary=True) from exc
    except OAuthSetupError as exc:
        raise TransportError(TransportErrorKind.AUTHENTICATION, str(exc)) from exc


def expire_access_token(integration: EmailIntegration, token: str) -> None:
    """The server refused a token we held for valid (revoked early): forget it."""
    tokens.expire_access_token(integration, token)
