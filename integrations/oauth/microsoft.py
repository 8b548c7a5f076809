"""Microsoft 365 through msal: authorization code with PKCE, refresh, and client credentials.

The authority host comes from settings (OAUTH_MICROSOFT_AUTHORITY_HOST); everything else is
msal's own code path, the one that talks to login.microsoftonline.com in production.
"""

from __future__ import annotations

import warnings
from typing import Any

import msal
import msal.exceptions
import requests
from django.conf import settings

from integrations.models import EmailIntegration
from integrations.oauth.credentials import parse_certificate_credential
from integrations.oauth.errors import (
    ConnectRefused,
    OAuthSetupError,
    ReconnectNeeded,
    TokenEndpointUnavailable,
)
from integrations.oauth.grants import NEEDS_ADMIN_ERRORS, TokenGrant, error_summary, expiry_in

# Delegated: the signed-in user's mailbox over IMAP, POP3 and SMTP. msal adds openid,
# profile and offline_access (the refresh token) by itself.
DELEGATED_SCOPES = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
]
# App-only: whatever mailbox permissions the admin granted the app (IMAP.AccessAsApp,
# POP.AccessAsApp, SMTP.SendAsApp) and the Exchange service principal's mailbox access.
APP_ONLY_SCOPES = ["https://outlook.office365.com/.default"]
# Microsoft Graph: a token has one audience, so Graph integrations ask for Graph's scopes
# only. Delegated: read, move and delete mail, send it, and who signed in (msal adds
# offline_access itself and refuses it in the list). App-only: the application permissions
# the admin granted the app in Entra (Mail.ReadWrite, Mail.Send), scoped to mailboxes by an
# application access policy.
GRAPH_DELEGATED_SCOPES = [
    "https://graph.microsoft.com/Mail.ReadWrite",
    "https://graph.microsoft.com/Mail.Send",
    "https://graph.microsoft.com/User.Read",
]
GRAPH_APP_ONLY_SCOPES = ["https://graph.microsoft.com/.default"]


def delegated_scopes(integration: EmailIntegration) -> list[str]:
    # Either direction through Graph: the model refuses Graph one way and IMAP/POP3 the other.
    if integration.uses_graph_token:
        return GRAPH_DELEGATED_SCOPES
    return DELEGATED_SCOPES


def app_only_scopes(integration: EmailIntegration) -> list[str]:
    if integration.uses_graph_token:
        return GRAPH_APP_ONLY_SCOPES
    return APP_ONLY_SCOPES


def authority_url(integration: EmailIntegration) -> str:
    host = settings.OAUTH_MICROSOFT_AUTHORITY_HOST.rstrip("/")
    return f"{host}/{integration.oauth_tenant.strip()}"


def _client_credential(integration: EmailIntegration) -> str | dict[str, str]:
    if integration.oauth_client_certificate:
        try:
            credential = parse_certificate_credential(integration.oauth_client_certificate)
        except ValueError as exc:
            raise OAuthSetupError(str(exc)) from exc
        # msal computes the SHA-256 thumbprint from the certificate.
        return {
            "private_key": credential.private_key_pem,
            "public_certificate": credential.certificate_pem,
        }
    if integration.oauth_client_secret:
        return integration.oauth_client_secret
    raise OAuthSetupError(
        "Enter the client secret (or the client certificate) of the app registered in "
        "Microsoft Entra, Apply, and connect again."
    )


def _application(integration: EmailIntegration) -> msal.ConfidentialClientApplication:
    """msal's client for the integration's app. Creating it reads the tenant's OpenID
    configuration, so an unknown tenant or an unreachable authority shows here."""
    try:
        return msal.ConfidentialClientApplication(
            integration.oauth_client_id.strip(),
            client_credential=_client_credential(integration),
            authority=authority_url(integration),
            # Instance discovery asks login.microsoftonline.com whether the host is one of
            # Microsoft's; off only for a private authority (the tests' local server).
            instance_discovery=settings.OAUTH_MICROSOFT_INSTANCE_DISCOVERY,
            timeout=settings.OAUTH_HTTP_TIMEOUT_SECONDS,
        )
    except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
        raise TokenEndpointUnavailable(
            f"Microsoft's sign-in service ({settings.OAUTH_MICROSOFT_AUTHORITY_HOST}) could not "
            f"be reached: {exc}"
        ) from exc
    except ValueError as exc:
        raise OAuthSetupError(
            f"Microsoft does not know the tenant {integration.oauth_tenant!r}: enter the "
            "tenant's id or its domain (contoso.onmicrosoft.com). "
            f"({str(exc).splitlines()[0]})"
        ) from exc


def _grant_from(result: dict[str, Any], *, what: str) -> TokenGrant:
    """msal answers with a dict: the tokens, or the provider's error."""
    if "access_token" in result:
        return TokenGrant(
            access_token=result["access_token"],
            expires_at=expiry_in(result.get("expires_in")),
            refresh_token=result.get("refresh_token", ""),
        )
    error = result.get("error", "unknown_error")
    summary = error_summary(error, result.get("error_description"))
    if error == "invalid_client":
        raise ReconnectNeeded(
            f"Microsoft refused the app's credentials while {what} ({summary}). The client "
            "secret or certificate may have expired: enter a new one, Apply, and press "
            "Connect with Microsoft."
        )
    if error in NEEDS_ADMIN_ERRORS:
        raise ReconnectNeeded(
            f"Microsoft refused the stored sign-in while {what} ({summary}): consent was "
            "revoked, the password changed or the sign-in expired. Press Connect with "
            "Microsoft to sign in again."
        )
    raise TokenEndpointUnavailable(f"Microsoft answered with an error while {what} ({summary}).")


def _call(integration: EmailIntegration, what: str, request) -> TokenGrant:
    try:
        result = request(_application(integration))
    except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
        raise TokenEndpointUnavailable(
            f"Microsoft's token endpoint could not be reached while {what}: {exc}"
        ) from exc
    return _grant_from(result, what=what)


# Delegated access: the admin signs in in the browser ---------------------------------------


def begin_authorization(integration: EmailIntegration, *, redirect_uri: str) -> dict[str, Any]:
    """msal's auth code flow (state, nonce and the PKCE verifier), to keep in the session
    until the browser comes back; its "auth_uri" is where the browser goes."""
    try:
        with warnings.catch_warnings():
            # msal recommends response_mode=form_post. That is a cross-site POST, which the
            # session cookie (SameSite=Lax) does not accompany: the callback could then not
            # match the state to the admin's session. The code comes back in the query.
            warnings.filterwarnings("ignore", message="response_mode='form_post'")
            return _application(integration).initiate_auth_code_flow(
                scopes=delegated_scopes(integration),
                redirect_uri=redirect_uri,
                login_hint=integration.oauth_mailbox or None,
                prompt="select_account",
                response_mode="query",
            )
    except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
        raise TokenEndpointUnavailable(f"Microsoft could not be reached: {exc}") from exc


def redeem_authorization(
    integration: EmailIntegration, *, flow: dict[str, Any], response: dict[str, str]
) -> TokenGrant:
    """Exchange the code the browser brought back (msal checks state, PKCE and nonce)."""
    try:
        result = _application(integration).acquire_token_by_auth_code_flow(
            flow, response, scopes=delegated_scopes(integration)
        )
    except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
        raise TokenEndpointUnavailable(f"Microsoft could not be reached: {exc}") from exc
    except (ValueError, RuntimeError) as exc:  # state or nonce mismatch
        raise ConnectRefused(f"The sign-in answer does not belong to this request: {exc}") from exc
    if "access_token" not in result:
        error = result.get("error", "unknown_error")
        raise ConnectRefused(
            "Microsoft did not grant access ("
            + error_summary(error, result.get("error_description"))
            + ")."
        )
    claims = result.get("id_token_claims") or {}
    if claims.get("aud") != integration.oauth_client_id.strip():
        raise ConnectRefused("Microsoft's answer was issued to another app (its audience).")
    account = claims.get("preferred_username") or claims.get("email") or claims.get("upn") or ""
    grant = _grant_from(result, what="connecting")
    return TokenGrant(
        access_token=grant.access_token,
        expires_at=grant.expires_at,
        refresh_token=grant.refresh_token,
        account=account,
    )


def refresh(integration: EmailIntegration) -> TokenGrant:
    return _call(
        integration,
        "refreshing the access token",
        lambda app: app.acquire_token_by_refresh_token(
            integration.grant.refresh_token, scopes=delegated_scopes(integration)
        ),
    )


# App-only access: client credentials --------------------------------------------------------


def app_only_token(integration: EmailIntegration) -> TokenGrant:
    return _call(
        integration,
        "getting an app-only token",
        lambda app: app.acquire_token_for_client(scopes=app_only_scopes(integration)),
    )
