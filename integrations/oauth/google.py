"""Google through google-auth: authorization code with PKCE and offline access (the
google-auth-oauthlib Flow), refresh, and service accounts with domain-wide delegation.

The authorization and token endpoints come from settings (OAUTH_GOOGLE_AUTH_URI,
OAUTH_GOOGLE_TOKEN_URI); the code path is the libraries' own.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import google.auth.exceptions
import google.auth.jwt
import google.auth.transport.requests
import google.oauth2.credentials
import google.oauth2.service_account
import requests
from django.conf import settings
from google_auth_oauthlib.flow import Flow
from oauthlib.oauth2.rfc6749.errors import OAuth2Error

from integrations.models import EmailIntegration
from integrations.oauth.credentials import parse_service_account_key
from integrations.oauth.errors import (
    ConnectRefused,
    OAuthSetupError,
    ReconnectNeeded,
    TokenEndpointUnavailable,
)
from integrations.oauth.grants import NEEDS_ADMIN_ERRORS, TokenGrant, error_summary, expiry_in

MAIL_SCOPE = "https://mail.google.com/"
# Named as Google names them in its answer ("email" comes back as userinfo.email): oauthlib
# refuses a token whose scopes differ from the ones asked for.
DELEGATED_SCOPES = ["openid", "https://www.googleapis.com/auth/userinfo.email", MAIL_SCOPE]


def _client_secret(integration: EmailIntegration) -> str:
    if not integration.oauth_client_secret:
        raise OAuthSetupError(
            "Enter the client secret of the OAuth client (Google Cloud console > APIs & "
            "Services > Credentials), Apply, and connect again."
        )
    return integration.oauth_client_secret


def _flow(integration: EmailIntegration, *, redirect_uri: str, **options: Any) -> Flow:
    config = {
        "web": {
            "client_id": integration.oauth_client_id.strip(),
            "client_secret": _client_secret(integration),
            "auth_uri": settings.OAUTH_GOOGLE_AUTH_URI,
            "token_uri": settings.OAUTH_GOOGLE_TOKEN_URI,
            "redirect_uris": [redirect_uri],
        }
    }
    return Flow.from_client_config(
        config, scopes=DELEGATED_SCOPES, redirect_uri=redirect_uri, **options
    )


def _transport() -> google.auth.transport.requests.Request:
    return google.auth.transport.requests.Request(requests.Session())


# Delegated access: the admin signs in in the browser ---------------------------------------


def begin_authorization(integration: EmailIntegration, *, redirect_uri: str) -> dict[str, Any]:
    """Where the browser goes, and the state and PKCE verifier to keep in the session."""
    flow = _flow(integration, redirect_uri=redirect_uri)
    auth_uri, state = flow.authorization_url(
        # offline: a refresh token; consent: Google sends one again on a reconnect, not
        # only the first time the app is granted.
        access_type="offline",
        prompt="consent",
        login_hint=integration.oauth_mailbox or None,
    )
    return {
        "auth_uri": auth_uri,
        "state": state,
        "code_verifier": flow.code_verifier,
        "redirect_uri": redirect_uri,
    }


def redeem_authorization(
    integration: EmailIntegration, *, flow: dict[str, Any], response: dict[str, str]
) -> TokenGrant:
    if response.get("error"):
        raise ConnectRefused(
            "Google did not grant access ("
            + error_summary(response["error"], response.get("error_description"))
            + ")."
        )
    if response.get("state") != flow["state"]:
        raise ConnectRefused("The sign-in answer does not belong to this request (state).")
    session_flow = _flow(
        integration,
        redirect_uri=flow["redirect_uri"],
        state=flow["state"],
        code_verifier=flow["code_verifier"],
        autogenerate_code_verifier=False,
    )
    try:
        token = session_flow.fetch_token(
            code=response.get("code", ""), timeout=settings.OAUTH_HTTP_TIMEOUT_SECONDS
        )
    except requests.RequestException as exc:
        raise TokenEndpointUnavailable(f"Google could not be reached: {exc}") from exc
    except OAuth2Error as exc:
        raise ConnectRefused(
            f"Google did not grant access ({error_summary(exc.error, exc.description)})."
        ) from exc
    except Warning as exc:  # oauthlib: the scopes granted are not the ones asked for
        raise ConnectRefused(
            f"Google granted other scopes than {', '.join(DELEGATED_SCOPES)}: {exc}. Allow "
            "every requested permission on Google's consent page."
        ) from exc
    if not token.get("refresh_token"):
        raise ConnectRefused("Google sent no refresh token: connect again and allow access.")
    return TokenGrant(
        access_token=token["access_token"],
        expires_at=expiry_in(token.get("expires_in")),
        refresh_token=token["refresh_token"],
        account=_account_from_id_token(integration, token.get("id_token", "")),
    )


def _account_from_id_token(integration: EmailIntegration, id_token: str) -> str:
    """The signed-in address. The ID token came straight from the token endpoint over
    verified TLS, which OpenID Connect (Core 3.1.3.7) accepts in place of checking its
    signature; its audience must still be this app."""
    if not id_token:
        raise ConnectRefused("Google's answer has no ID token: the email scope is missing.")
    try:
        claims = google.auth.jwt.decode(id_token, verify=False)
    except ValueError as exc:
        raise ConnectRefused(f"Google's ID token cannot be read: {exc}") from exc
    if claims.get("aud") != integration.oauth_client_id.strip():
        raise ConnectRefused("Google's answer was issued to another app (its audience).")
    if not claims.get("email") or claims.get("email_verified") is False:
        raise ConnectRefused("Google's answer does not name a verified email address.")
    return claims["email"]


def refresh(integration: EmailIntegration) -> TokenGrant:
    credentials = google.oauth2.credentials.Credentials(
        token=None,
        refresh_token=integration.grant.refresh_token,
        token_uri=settings.OAUTH_GOOGLE_TOKEN_URI,
        client_id=integration.oauth_client_id.strip(),
        client_secret=_client_secret(integration),
    )
    return _refreshed(credentials, what="refreshing the access token")


# App-only access: a service account acting as the mailbox ----------------------------------


def app_only_token(integration: EmailIntegration) -> TokenGrant:
    try:
        info = parse_service_account_key(integration.oauth_service_account_key)
    except ValueError as exc:
        raise OAuthSetupError(str(exc)) from exc
    credentials = google.oauth2.service_account.Credentials.from_service_account_info(
        info, scopes=[MAIL_SCOPE], subject=integration.oauth_mailbox
    ).with_token_uri(settings.OAUTH_GOOGLE_TOKEN_URI)
    return _refreshed(credentials, what="getting a token for the service account")


def _refreshed(credentials: Any, *, what: str) -> TokenGrant:
    try:
        credentials.refresh(_transport())
    except google.auth.exceptions.RefreshError as exc:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = data.get("error", "")
        summary = error_summary(error, data.get("error_description")) if error else str(exc)
        if error == "invalid_client":
            raise ReconnectNeeded(
                f"Google refused the app's credentials while {what} ({summary}). Enter the "
                "current client secret (or service account key), Apply, and connect again."
            ) from exc
        if error in NEEDS_ADMIN_ERRORS:
            raise ReconnectNeeded(
                f"Google refused the stored grant while {what} ({summary}): access was "
                "revoked, the password changed, or domain-wide delegation is not granted. "
                "Press Connect with Google to sign in again."
            ) from exc
        raise TokenEndpointUnavailable(
            f"Google answered with an error while {what} ({summary})."
        ) from exc
    except google.auth.exceptions.TransportError as exc:
        raise TokenEndpointUnavailable(f"Google could not be reached while {what}: {exc}") from exc
    expires_at = expiry_in(None)
    if credentials.expiry is not None:
        # google-auth keeps a naive UTC expiry.
        expires_at = credentials.expiry.replace(tzinfo=UTC)
    return TokenGrant(
        access_token=credentials.token,
        expires_at=expires_at,
        refresh_token=getattr(credentials, "refresh_token", None) or "",
    )
