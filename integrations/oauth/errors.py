"""What can go wrong with OAuth 2.0, by who has to act."""

from __future__ import annotations


class OAuthError(Exception):
    """Base: the message is written for an admin."""


class OAuthSetupError(OAuthError):
    """The integration's settings cannot work (no client secret, a malformed key): an admin
    fixes the form."""


class ReconnectNeeded(OAuthError):
    """The provider refused the stored grant or the app's credentials (consent revoked,
    password changed, client secret expired). Retrying cannot help: an admin must connect
    again, or enter new credentials and connect again."""


class TokenEndpointUnavailable(OAuthError):
    """The provider could not be reached or answered with a temporary error: try again on
    the next pass."""


class ConnectRefused(OAuthError):
    """The sign-in in the browser did not give a usable token (denied, wrong account, a
    stale or foreign state): nothing was stored."""
