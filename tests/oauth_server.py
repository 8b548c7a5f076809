"""A local OAuth 2.0 provider playing Microsoft's and Google's parts, for the whole test run.

The root conftest registers this module (`pytest_plugins`). One server, two listeners on
loopback, one set of tokens:

- HTTPS (its own self-signed CA; the tests put it in REQUESTS_CA_BUNDLE): what msal and
  google-auth talk to. Microsoft's OpenID configuration
  (`/{tenant}/v2.0/.well-known/openid-configuration`), authorize and token endpoints under
  `/{tenant}/oauth2/v2.0/`; Google's under `/google/auth` and `/google/token`.
- HTTP: `/introspect` for Dovecot's oauth2 passdb (RFC 7662: active, email), which then
  accepts only valid, unexpired tokens of the user logging in.

The authorize endpoint shows a one-button consent page that signs in as `sign_in_as(...)`
(else the login_hint) and sends the browser back with a code. The test controls tokens:
`expire_access_tokens()`, `revoke(account)`, `take_down()` (the token endpoint answers 503),
and counts the grants it served (`grants["refresh_token"]`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest
from cryptography import x509

from tests.dovecot import _self_signed_certificate

ACCESS_TOKEN_SECONDS = 3600
GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Client:
    """An app registered with the provider."""

    client_id: str
    secret: str
    provider: str  # "microsoft" or "google"
    tenant: str = ""
    # App-only (client credentials): the mailbox the app was granted.
    app_mailbox: str = ""
    # Microsoft certificate credential: the public certificate (PEM) uploaded for the app.
    certificate_pem: str = ""


@dataclass
class ServiceAccount:
    client_email: str
    public_key_pem: str
    # Domain-wide delegation: the mailboxes it may act as.
    delegated: set[str] = field(default_factory=set)


@dataclass
class AccessToken:
    account: str
    client_id: str
    expires_at: float
    # What the token was asked for: its audience (resource) and permissions, as a resource
    # server such as the tests' Graph server checks them.
    scope: str = ""


@dataclass
class RefreshToken:
    account: str
    client_id: str
    revoked: bool = False


class OAuthServer:
    def __init__(self, directory: Path) -> None:
        self.host = "127.0.0.1"
        self.directory = directory
        self.ca_pem, cert_path, key_path = _self_signed_certificate(directory)
        self.ca_path = cert_path
        self.key_path = key_path
        self._lock = threading.Lock()
        self.clients: dict[str, Client] = {}
        self.service_accounts: dict[str, ServiceAccount] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.grants: Counter[str] = Counter()
        self.introspections = 0
        self.down = False
        self._next_account: str | None = None
        self._id_token_key = secrets.token_bytes(32)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        self._https = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
        self._http = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        for server in (self._https, self._http):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    # Where things are ------------------------------------------------------------------

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self._https.server_address[1]}"

    @property
    def microsoft_authority_host(self) -> str:
        return self.https_url

    @property
    def google_auth_uri(self) -> str:
        return f"{self.https_url}/google/auth"

    @property
    def google_token_uri(self) -> str:
        return f"{self.https_url}/google/token"

    @property
    def introspection_url(self) -> str:
        return f"http://{self.host}:{self._http.server_address[1]}/introspect"

    def shutdown(self) -> None:
        for server in (self._https, self._http):
            server.shutdown()
            server.server_close()

    # What tests control ----------------------------------------------------------------

    def register_client(
        self,
        provider: str,
        *,
        tenant: str = "",
        app_mailbox: str = "",
        certificate_pem: str = "",
    ) -> Client:
        client = Client(
            client_id=f"client-{secrets.token_hex(6)}",
            secret=secrets.token_urlsafe(16),
            provider=provider,
            tenant=tenant or f"tenant-{secrets.token_hex(4)}.onmicrosoft.test",
            app_mailbox=app_mailbox,
            certificate_pem=certificate_pem,
        )
        with self._lock:
            self.clients[client.client_id] = client
        return client

    def register_service_account(self, public_key_pem: str, *delegated: str) -> ServiceAccount:
        account = ServiceAccount(
            client_email=f"desk-{secrets.token_hex(4)}@project.iam.gserviceaccount.test",
            public_key_pem=public_key_pem,
            delegated=set(delegated),
        )
        with self._lock:
            self.service_accounts[account.client_email] = account
        return account

    def sign_in_as(self, account: str | None) -> None:
        """Who signs in on the next consent pages (None: the login_hint)."""
        self._next_account = account

    def expire_access_tokens(self, account: str | None = None) -> None:
        with self._lock:
            for token in self.access_tokens.values():
                if account is None or token.account == account:
                    token.expires_at = 0

    def revoke(self, account: str) -> None:
        """The user revoked the consent (or changed the password): every token goes."""
        with self._lock:
            for token in self.refresh_tokens.values():
                if token.account == account:
                    token.revoked = True
        self.expire_access_tokens(account)

    def take_down(self) -> None:
        self.down = True

    def bring_up(self) -> None:
        self.down = False

    def account_of(self, access_token: str) -> str | None:
        """Whose valid, unexpired access token this is (None: not valid)."""
        with self._lock:
            token = self.access_tokens.get(access_token)
            if token is None or token.expires_at <= time.time():
                return None
            return token.account

    def token(self, access_token: str) -> AccessToken | None:
        """The valid, unexpired access token (None: unknown or expired)."""
        with self._lock:
            token = self.access_tokens.get(access_token)
            if token is None or token.expires_at <= time.time():
                return None
            return token

    def xoauth2_is_valid(self, user: str, access_token: str) -> bool:
        """What the SMTP server asks: a valid token of this very user."""
        account = self.account_of(access_token)
        return account is not None and account.lower() == user.lower()

    # Issuing ---------------------------------------------------------------------------

    def _issue(
        self, *, client: Client, account: str, refresh: bool, scope: str, nonce: str | None
    ) -> dict[str, Any]:
        access = f"at-{secrets.token_urlsafe(24)}"
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": scope,
        }
        with self._lock:
            self.access_tokens[access] = AccessToken(
                account=account,
                client_id=client.client_id,
                expires_at=time.time() + 3600,
                scope=scope,
            )
            if refresh:
                refresh_token = f"rt-{secrets.token_urlsafe(24)}"
                self.refresh_tokens[refresh_token] = RefreshToken(
                    account=account, client_id=client.client_id
                )
                answer["refresh_token"] = refresh_token
        if nonce is not None or client.provider == "google":
            answer["id_token"] = self._id_token(client=client, account=account, nonce=nonce)
        return answer

    def _id_token(self, *, client: Client, account: str, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": client.client_id,
            "sub": hashlib.sha256(account.encode()).hexdigest()[:20],
            "iat": now,
            "exp": now + 3600,
        }
        if client.provider == "microsoft":
            claims |= {
                "iss": f"{self.https_url}/{client.tenant}/v2.0",
                "preferred_username": account,
                "tid": client.tenant,
            }
        else:
            claims |= {"iss": GOOGLE_ISSUER, "email": account, "email_verified": True}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode(claims, self._id_token_key, algorithm="HS256")


def _b64url_sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _handler_for(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: pytest shows failures, not every request

        # Plumbing ----------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            return {key: values[0] for key, values in parse_qs(body).items()}

        # GET ---------------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            parts = url.path.strip("/").split("/")
            if url.path.endswith("/v2.0/.well-known/openid-configuration"):
                return self._openid_configuration(parts[0])
            if url.path.endswith("/oauth2/v2.0/authorize") or url.path == "/google/auth":
                return self._consent_page(query)
            self._json(404, {"error": "not_found"})

        def _openid_configuration(self, tenant: str) -> None:
            base = f"{server.https_url}/{tenant}"
            self._json(
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "response_types_supported": ["code"],
                },
            )

        def _consent_page(self, query: dict[str, str]) -> None:
            client = server.clients.get(query.get("client_id", ""))
            redirect_uri = query.get("redirect_uri", "")
            if client is None or not redirect_uri or query.get("response_type") != "code":
                return self._send(400, b"unknown client or bad request", "text/plain")
            if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
                return self._send(400, b"PKCE (S256) is required", "text/plain")
            account = server._next_account or query.get("login_hint", "")
            code = f"code-{secrets.token_urlsafe(16)}"
            with server._lock:
                server.codes[code] = {
                    "client_id": client.client_id,
                    "account": account,
                    "redirect_uri": redirect_uri,
                    "challenge": query["code_challenge"],
                    "nonce": query.get("nonce"),
                    "scope": query.get("scope", ""),
                }
            accept = redirect_uri + "?" + urlencode({"code": code, "state": query["state"]})
            deny = (
                redirect_uri + "?" + urlencode({"error": "access_denied", "state": query["state"]})
            )
            page = (
                "<!doctype html><title>Sign in</title>"
                f"<h1>Sign in to the test {client.provider} as {html.escape(account)}</h1>"
                f"<p>The app {html.escape(client.client_id)} asks for "
                f"{html.escape(query.get('scope', ''))}.</p>"
                f'<a id="accept" href="{html.escape(accept)}">Accept</a> '
                f'<a id="deny" href="{html.escape(deny)}">Cancel</a>'
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")

        # POST --------------------------------------------------------------------------

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            form = self._form()
            if url.path == "/introspect":
                return self._introspect(form)
            if url.path.endswith("/oauth2/v2.0/token") or url.path == "/google/token":
                provider = "google" if url.path == "/google/token" else "microsoft"
                if server.down:
                    return self._json(
                        503,
                        {"error": "temporarily_unavailable", "error_description": "down"},
                    )
                try:
                    answer = self._token(form, provider=provider, token_url=url.path)
                except _OAuthError as exc:
                    return self._json(
                        exc.status, {"error": exc.error, "error_description": exc.description}
                    )
                return self._json(200, answer)
            self._json(404, {"error": "not_found"})

        def _introspect(self, form: dict[str, str]) -> None:
            server.introspections += 1
            account = server.account_of(form.get("token", ""))
            if account is None:
                return self._json(200, {"active": False})
            self._json(200, {"active": True, "email": account})

        def _client(self, form: dict[str, str], *, provider: str) -> Client:
            client_id, secret = form.get("client_id", ""), form.get("client_secret")
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                decoded = base64.b64decode(header[6:]).decode()
                client_id, _, secret = decoded.partition(":")
                client_id = client_id.replace("%40", "@")
            client = server.clients.get(client_id)
            if client is None or client.provider != provider:
                raise _OAuthError(401, "invalid_client", f"AADSTS700016: no app {client_id}")
            if form.get("client_assertion_type") == CLIENT_ASSERTION_TYPE:
                self._check_client_assertion(client, form.get("client_assertion", ""))
            elif secret != client.secret:
                raise _OAuthError(401, "invalid_client", "AADSTS7000215: Invalid client secret")
            return client

        def _check_client_assertion(self, client: Client, assertion: str) -> None:
            if not client.certificate_pem:
                raise _OAuthError(401, "invalid_client", "no certificate for this app")
            public_key = x509.load_pem_x509_certificate(
                client.certificate_pem.encode()
            ).public_key()
            try:
                claims = jwt.decode(
                    assertion,
                    public_key,
                    algorithms=["RS256", "PS256"],
                    options={"verify_aud": False},
                )
            except jwt.PyJWTError as exc:
                raise _OAuthError(401, "invalid_client", f"bad client assertion: {exc}") from exc
            if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
                raise _OAuthError(401, "invalid_client", "client assertion for another app")

        def _token(self, form: dict[str, str], *, provider: str, token_url: str) -> dict:
            grant_type = form.get("grant_type", "")
            if grant_type == JWT_BEARER:
                return self._service_account_grant(form, token_url=token_url)
            client = self._client(form, provider=provider)
            server.grants[grant_type] += 1
            if grant_type == "authorization_code":
                return self._code_grant(client, form)
            if grant_type == "refresh_token":
                token = server.refresh_tokens.get(form.get("refresh_token", ""))
                if token is None or token.revoked or token.client_id != client.client_id:
                    raise _OAuthError(
                        400,
                        "invalid_grant",
                        "AADSTS50173: The provided grant has expired due to it being revoked.",
                    )
                # Microsoft rotates refresh tokens; Google keeps the first one.
                return server._issue(
                    client=client,
                    account=token.account,
                    refresh=provider == "microsoft",
                    scope=form.get("scope", ""),
                    nonce=None,
                )
            if grant_type == "client_credentials" and provider == "microsoft":
                if not form.get("scope", "").endswith("/.default") or not client.app_mailbox:
                    raise _OAuthError(400, "unauthorized_client", "app-only access not granted")
                return server._issue(
                    client=client,
                    account=client.app_mailbox,
                    refresh=False,
                    scope=form["scope"],
                    nonce=None,
                )
            raise _OAuthError(400, "unsupported_grant_type", grant_type)

        def _code_grant(self, client: Client, form: dict[str, str]) -> dict:
            with server._lock:
                code = server.codes.pop(form.get("code", ""), None)
            if code is None or code["client_id"] != client.client_id:
                raise _OAuthError(400, "invalid_grant", "AADSTS70000: unknown or used code")
            if code["redirect_uri"] != form.get("redirect_uri"):
                raise _OAuthError(400, "invalid_grant", "redirect_uri does not match")
            if _b64url_sha256(form.get("code_verifier", "")) != code["challenge"]:
                raise _OAuthError(400, "invalid_grant", "PKCE code_verifier does not match")
            return server._issue(
                client=client,
                account=code["account"],
                refresh=True,
                scope=code["scope"],
                nonce=code["nonce"],
            )

        def _service_account_grant(self, form: dict[str, str], *, token_url: str) -> dict:
            server.grants[JWT_BEARER] += 1
            assertion = form.get("assertion", "")
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            account = server.service_accounts.get(unverified.get("iss", ""))
            if account is None:
                raise _OAuthError(401, "invalid_client", "unknown service account")
            try:
                claims = jwt.decode(
                    assertion,
                    account.public_key_pem,
                    algorithms=["RS256"],
                    # google-auth puts Google's token URI in the assertion whatever URI it
                    # posts to, and Google accepts that.
                    audience=[server.https_url + token_url, GOOGLE_TOKEN_AUDIENCE],
                )
            except jwt.PyJWTError as exc:
                raise _OAuthError(400, "invalid_grant", f"bad assertion: {exc}") from exc
            subject = claims.get("sub", "")
            if subject not in account.delegated or "https://mail.google.com/" not in claims.get(
                "scope", ""
            ):
                raise _OAuthError(
                    401, "unauthorized_client", "Client is unauthorized to retrieve access tokens"
                )
            google_client = Client(
                client_id=account.client_email, secret="", provider="google-service-account"
            )
            return server._issue(
                client=google_client,
                account=subject,
                refresh=False,
                scope=claims["scope"],
                nonce=None,
            )

    return Handler


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    directory = Path(tempfile.mkdtemp(prefix="servicedesk-oauth-"))
    server = OAuthServer(directory)
    try:
        yield server
    finally:
        server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def oauth_settings(
    oauth_server: OAuthServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> OAuthServer:
    """Point the desk's OAuth settings at the local provider, and trust its certificate in
    every requests session (msal, google-auth and oauthlib all use requests)."""
    settings.OAUTH_MICROSOFT_AUTHORITY_HOST = oauth_server.microsoft_authority_host
    settings.OAUTH_MICROSOFT_INSTANCE_DISCOVERY = False
    settings.OAUTH_GOOGLE_AUTH_URI = oauth_server.google_auth_uri
    settings.OAUTH_GOOGLE_TOKEN_URI = oauth_server.google_token_uri
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_server.ca_path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    oauth_server.bring_up()
    oauth_server.sign_in_as(None)
    return oauth_server
