"""A local Microsoft Graph for the mail the desk reads and sends, for the whole test run.

The root conftest registers this module (`pytest_plugins`). It listens on 127.0.0.1 over
HTTPS with the OAuth server's certificate (so the one CA file in REQUESTS_CA_BUNDLE covers
both) and checks every bearer token with the tests' OAuth server (tests/oauth_server.py):
unknown or expired -> 401, a token for another audience than https://graph.microsoft.com
-> 401, a mailbox the token may not read -> 403.

The request and response shapes are Microsoft's (Graph v1.0):

- `GET /v1.0/users/{id|userPrincipalName}/mailFolders/{id|well-known name}`, its
  `childFolders`, and `mailFolders?$filter=displayName eq '...'`;
- `GET .../mailFolders/{id}/messages/delta` with `$select`, `Prefer: odata.maxpagesize`,
  `@odata.nextLink` pages and a closing `@odata.deltaLink`; later rounds report new messages
  and `@removed` ones; an expired link answers 410 Gone (SyncStateNotFound);
- `GET .../messages/{id}/$value` (the MIME bytes), `POST .../messages/{id}/move`,
  `DELETE .../messages/{id}` (to Deleted Items, as Exchange does);
- `POST .../sendMail` with a base64 MIME body (Content-Type: text/plain): 202, and a copy in
  Sent Items; what was sent is kept in `sent`; it needs Mail.Send (not Mail.ReadWrite); a
  recipient in `unknown_recipients` answers 400 ErrorInvalidRecipients, a body over 4 MB 413;
- `POST /v1.0/subscriptions` (the validation handshake with the notification URL), `PATCH`
  to renew, `DELETE`; change notifications for new messages, and lifecycle notifications
  the test sends with `lifecycle(...)`;
- throttling: `throttle(n, status=429|503, retry_after=s)` answers the next n requests so,
  and a fifth concurrent request for one mailbox gets 429 ApplicationThrottled
  (MailboxConcurrency), as Exchange Online's limit of 4 does;
- errors in Graph's shape: {"error": {"code": ..., "message": ...}}.

Tests put messages in with `deliver(mailbox, raws, folder=...)`, as tests/mail.py's emails
go into Dovecot, and look with `messages(mailbox, folder)`.
"""

from __future__ import annotations

import base64
import binascii
import email
import itertools
import json
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

import pytest
import requests

from tests.oauth_server import OAuthServer

GRAPH_AUDIENCE = "https://graph.microsoft.com/"
MAX_CONCURRENT_PER_MAILBOX = 4
DEFAULT_PAGE_SIZE = 10  # Graph's default for message delta when no maxpagesize is asked
MAX_PAGE_SIZE = 1000
MAX_SUBSCRIPTION_MINUTES = 4230
SENDMAIL_MAX_BYTES = 4 * 1024 * 1024  # Graph's limit on a request's size
VALIDATION_TIMEOUT_SECONDS = 10
WELL_KNOWN = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "drafts": "Drafts",
    "junkemail": "Junk Email",
    "archive": "Archive",
}
ACCESS_DENIED = "Access is denied. Check credentials and try again."
ACCESS_POLICY_DENIED = (
    "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy "
    "settings."
)


@dataclass
class Folder:
    id: str
    display_name: str
    parent_id: str
    well_known: str = ""


@dataclass
class StoredMessage:
    id: str
    mime: bytes
    received: datetime
    subject: str
    folder_id: str


@dataclass
class Mailbox:
    address: str
    id: str
    root_id: str
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    # (sequence, message id, folder it left or "", folder it entered or ""), in order.
    events: list[tuple[int, str, str, str]] = field(default_factory=list)
    # Bumped by expire_delta_links(): every earlier delta or next link answers 410.
    epoch: int = 0
    in_flight: int = 0
    most_in_flight: int = 0


@dataclass
class App:
    """What Graph knows of an app: its application permissions and access policy."""

    roles: set[str] = field(default_factory=lambda: {"Mail.ReadWrite", "Mail.Send"})
    # An application access policy: the only mailboxes app-only tokens may open (None: all).
    allowed_mailboxes: set[str] | None = None


@dataclass
class Subscription:
    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str
    client_state: str
    expires_at: datetime
    mailbox: str
    folder_id: str
    client_id: str
    renewals: int = 0


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class GraphServer:
    def __init__(self, oauth: OAuthServer) -> None:
        self.oauth = oauth
        self.host = "127.0.0.1"
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)
        self.mailboxes: dict[str, Mailbox] = {}
        self.apps: dict[str, App] = {}
        # Delegated: the users who hold Full Access to another (shared) mailbox.
        self.full_access: dict[str, set[str]] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.sent: list[tuple[str, bytes]] = []  # (mailbox, MIME) of every sendMail
        self.unknown_recipients: set[str] = set()  # sendMail refuses these (lowercase)
        self.requests: Counter[str] = Counter()  # "GET delta", "DELETE message", ...
        # Each delta request: "start" (no token), "delta" (a deltaLink), "next" (a nextLink).
        self.delta_requests: list[str] = []
        self.notifications: list[tuple[str, int, dict[str, Any]]] = []  # (url, status, body)
        # Where the desk's public URL is served from in the tests: the reverse proxy that
        # would stand between Graph and the desk, as {public prefix: local base URL}.
        self.routes: dict[str, str] = {}
        self._throttle: list[tuple[int, str, int]] = []  # (status, code, retry_after) per request
        self._failures: dict[str, int] = Counter()
        self.value_delay = 0.0
        # Exchange keeps no MIME and writes it anew for each $value: with this on, every
        # fetch of a message differs (a header of its own), as a real tenant's may.
        self.mime_written_anew = False
        self._value_fetches = 0
        self.notify_new_mail = True

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(oauth.ca_path, oauth.key_path)
        self._server = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    # Where it is ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What the desk's MICROSOFT_GRAPH_URL is set to."""
        return f"https://{self.host}:{self._server.server_address[1]}/v1.0"

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # What tests control -----------------------------------------------------------------

    def add_mailbox(self, address: str) -> Mailbox:
        with self._lock:
            existing = self.mailboxes.get(address.lower())
            if existing is not None:
                return existing
            root = _new_id("root")
            mailbox = Mailbox(address=address, id=str(uuid.uuid4()), root_id=root)
            for name, display in WELL_KNOWN.items():
                folder = Folder(id=_new_id(name), display_name=display, parent_id=root)
                folder.well_known = name
                mailbox.folders[folder.id] = folder
            self.mailboxes[address.lower()] = mailbox
            return mailbox

    def add_folder(self, address: str, path: str) -> Folder:
        """A folder by its path of display names under the top of the mailbox ("A/B")."""
        with self._lock:
            mailbox = self.add_mailbox(address)
            parent = mailbox.root_id
            folder = None
            for name in path.split("/"):
                folder = next(
                    (
                        f
                        for f in mailbox.folders.values()
                        if f.parent_id == parent and f.display_name.lower() == name.lower()
                    ),
                    None,
                )
                if folder is None:
                    folder = Folder(id=_new_id("folder"), display_name=name, parent_id=parent)
                    mailbox.folders[folder.id] = folder
                parent = folder.id
            assert folder is not None
            return folder

    def app(self, client_id: str) -> App:
        with self._lock:
            return self.apps.setdefault(client_id, App())

    def deliver(self, address: str, raws: bytes | list[bytes], folder: str = "inbox") -> list[str]:
        """Put messages into the folder (a well-known name or a path), oldest first; the
        change notifications of its subscriptions follow. Returns the messages' ids."""
        if isinstance(raws, bytes):
            raws = [raws]
        ids = []
        with self._lock:
            mailbox = self.add_mailbox(address)
            target = self._folder_by_name(mailbox, folder)
            for raw in raws:
                message = StoredMessage(
                    id=_new_id("AAMkAG"),
                    mime=raw,
                    received=datetime.now(UTC),
                    subject=_subject_of(raw),
                    folder_id=target.id,
                )
                mailbox.messages[message.id] = message
                self._event(mailbox, message.id, "", target.id)
                ids.append(message.id)
            subscriptions = [
                s
                for s in self.subscriptions.values()
                if s.mailbox == mailbox.address.lower() and s.folder_id == target.id
            ]
        if self.notify_new_mail:
            for subscription in subscriptions:
                for message_id in ids:
                    self._notify_later(subscription, _change(subscription, mailbox, message_id))
        return ids

    def messages(self, address: str, folder: str = "inbox") -> list[StoredMessage]:
        with self._lock:
            mailbox = self.mailboxes[address.lower()]
            target = self._folder_by_name(mailbox, folder)
            return [m for m in mailbox.messages.values() if m.folder_id == target.id]

    def count(self, address: str, folder: str = "inbox") -> int:
        return len(self.messages(address, folder))

    def throttle(self, requests: int, *, status: int = 429, retry_after: int = 1) -> None:
        """Answer the next `requests` requests (of any mailbox) with 429 or 503."""
        code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
        with self._lock:
            self._throttle.extend([(status, code, retry_after)] * requests)

    def stop_throttling(self) -> None:
        with self._lock:
            self._throttle.clear()

    def fail_next(self, what: str, times: int = 1) -> None:
        """Make the next `times` requests of a kind ("DELETE message", "POST move", ...)
        fail with 500, as a server that refuses the ack."""
        with self._lock:
            self._failures[what] += times

    def expire_delta_links(self, address: str) -> None:
        """Exchange dropped the mailbox's sync state: old delta links now answer 410."""
        with self._lock:
            self.mailboxes[address.lower()].epoch += 1

    def most_in_flight(self, address: str) -> int:
        return self.mailboxes[address.lower()].most_in_flight

    def route(self, public_prefix: str, local_base: str) -> None:
        self.routes[public_prefix.rstrip("/")] = local_base.rstrip("/")

    def lifecycle(self, subscription_id: str, event: str) -> int:
        """Send a lifecycle notification (reauthorizationRequired, subscriptionRemoved,
        missed) now; returns the HTTP status the desk answered."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            if event == "subscriptionRemoved":
                del self.subscriptions[subscription_id]
        body = {
            "value": [
                {
                    "subscriptionId": subscription.id,
                    "subscriptionExpirationDateTime": _iso(subscription.expires_at),
                    "tenantId": str(uuid.uuid4()),
                    "clientState": subscription.client_state,
                    "lifecycleEvent": event,
                }
            ]
        }
        url = subscription.lifecycle_url or subscription.notification_url
        return self._post_notification(url, body)

    # Internals ----------------------------------------------------------------------------

    def _event(self, mailbox: Mailbox, message_id: str, left: str, entered: str) -> None:
        mailbox.events.append((next(self._sequence), message_id, left, entered))

    def _folder_by_name(self, mailbox: Mailbox, name: str) -> Folder:
        if name.lower() in WELL_KNOWN:
            return next(f for f in mailbox.folders.values() if f.well_known == name.lower())
        if name in mailbox.folders:
            return mailbox.folders[name]
        return self.add_folder(mailbox.address, name)

    def _public_to_local(self, url: str) -> str:
        for prefix, local in self.routes.items():
            if url.startswith(prefix):
                return local + url[len(prefix) :]
        return url

    def _post_notification(self, url: str, body: dict[str, Any]) -> int:
        try:
            answer = requests.post(
                self._public_to_local(url),
                json=body,
                timeout=30,
                verify=str(self.oauth.ca_path),
            )
            status = answer.status_code
        except requests.RequestException:
            status = 0
        self.notifications.append((url, status, body))
        return status

    def _notify_later(self, subscription: Subscription, notification: dict[str, Any]) -> None:
        threading.Thread(
            target=self._post_notification,
            args=(subscription.notification_url, {"value": [notification]}),
            daemon=True,
        ).start()

    def _validate(self, url: str) -> bool:
        """Graph's handshake: POST to the URL with a validationToken, expect it back."""
        token = f"Validation: Testing client application reachability {secrets.token_hex(8)}"
        target = self._public_to_local(url)
        separator = "&" if "?" in target else "?"
        try:
            answer = requests.post(
                target + separator + urlencode({"validationToken": token}),
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=VALIDATION_TIMEOUT_SECONDS,
                verify=str(self.oauth.ca_path),
            )
        except requests.RequestException:
            return False
        return (
            answer.status_code == 200
            and answer.headers.get("Content-Type", "").startswith("text/plain")
            and answer.text == token
        )


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(24)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject_of(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].splitlines():
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode("utf-8", "replace")
    return ""


def _encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any]:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise GraphError(400, "BadRequest", "The delta token is malformed.") from exc


def _change(subscription: Subscription, mailbox: Mailbox, message_id: str) -> dict[str, Any]:
    return {
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": _iso(subscription.expires_at),
        "changeType": "created",
        "resource": f"Users/{mailbox.id}/Messages/{message_id}",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": f"Users/{mailbox.id}/Messages/{message_id}",
            "id": message_id,
        },
        "clientState": subscription.client_state,
        "tenantId": str(uuid.uuid4()),
    }


def _handler_for(server: GraphServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm the body then waits
        # for the client's delayed ACK (40 ms a response on Linux), which would measure
        # the test server, not the desk.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        # Plumbing ----------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
            self.send_response(status)
            if body or status not in (202, 204):
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("request-id", str(uuid.uuid4()))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any], **headers: str) -> None:
            body = json.dumps(data).encode()
            self._send(status, body, "application/json;odata.metadata=minimal", **headers)

        def _error(self, error: GraphError) -> None:
            inner = {
                "date": _iso(datetime.now(UTC)),
                "request-id": str(uuid.uuid4()),
                "client-request-id": self.headers.get("client-request-id", str(uuid.uuid4())),
            }
            body = {"error": {"code": error.code, "message": error.message, "innerError": inner}}
            self._json(error.status, body, **error.headers)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PATCH(self) -> None:  # noqa: N802
            self._dispatch("PATCH")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            body = self._body()
            url = urlparse(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            parts = [unquote(part) for part in url.path.strip("/").split("/")]
            mailbox: Mailbox | None = None
            try:
                if parts[:1] != ["v1.0"]:
                    raise GraphError(404, "BadRequest", "Unsupported API version.")
                parts = parts[1:]
                with server._lock:
                    if server._throttle:
                        status, code, retry_after = server._throttle.pop(0)
                        message = (
                            "Application is over its MailboxConcurrency limit."
                            if status == 429
                            else "The service is temporarily unavailable."
                        )
                        raise GraphError(status, code, message, Retry_After=str(retry_after))
                token = self._authenticate()
                if parts[:1] == ["subscriptions"]:
                    return self._subscriptions(method, parts[1:], body, token)
                if len(parts) < 3 or parts[0] != "users":
                    raise GraphError(400, "BadRequest", f"Resource not found for {url.path}.")
                # Sending needs Mail.Send only; everything else reads or changes mail.
                role = "Mail.Send" if parts[2:] == ["sendMail"] else "Mail.ReadWrite"
                mailbox = self._mailbox(parts[1], token, role)
                with server._lock:
                    if mailbox.in_flight >= MAX_CONCURRENT_PER_MAILBOX:
                        mailbox = None  # not counted: refused before it started
                        raise GraphError(
                            429,
                            "ApplicationThrottled",
                            "Application is over its MailboxConcurrency limit.",
                            Retry_After="1",
                        )
                    mailbox.in_flight += 1
                    mailbox.most_in_flight = max(mailbox.most_in_flight, mailbox.in_flight)
                self._mail(method, mailbox, parts[2:], query, body, token)
            except GraphError as error:
                self._error(error)
            finally:
                if mailbox is not None:
                    with server._lock:
                        mailbox.in_flight -= 1

        # Who is asking -------------------------------------------------------------------

        def _authenticate(self) -> Any:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
            token = server.oauth.token(header[7:])
            if token is None:
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                    WWW_Authenticate='Bearer error="invalid_token"',
                )
            if GRAPH_AUDIENCE not in token.scope:
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token validation failure. Invalid audience.",
                    WWW_Authenticate='Bearer error="invalid_token"',
                )
            return token

        def _mailbox(self, user: str, token: Any, role: str = "Mail.ReadWrite") -> Mailbox:
            with server._lock:
                mailbox = server.mailboxes.get(user.lower()) or next(
                    (m for m in server.mailboxes.values() if m.id == user), None
                )
            if mailbox is None:
                raise GraphError(
                    404, "ErrorInvalidUser", f"The requested user '{user}' is invalid."
                )
            app_only = token.scope.rstrip().endswith("/.default")
            if app_only:
                app = server.app(token.client_id)
                if role not in app.roles:
                    raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
                allowed = app.allowed_mailboxes
                if allowed is not None and mailbox.address.lower() not in allowed:
                    raise GraphError(403, "ErrorAccessDenied", ACCESS_POLICY_DENIED)
                return mailbox
            if role not in token.scope:
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            account = token.account.lower()
            if account != mailbox.address.lower() and mailbox.address.lower() not in (
                server.full_access.get(account, set())
            ):
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            return mailbox

        # Mail ----------------------------------------------------------------------------

        def _mail(
            self,
            method: str,
            mailbox: Mailbox,
            parts: list[str],
            query: dict[str, str],
            body: bytes,
            token: Any,
        ) -> None:
            if parts == ["sendMail"] and method == "POST":
                return self._send_mail(mailbox, body, token)
            if parts[0] == "mailFolders":
                return self._folders(method, mailbox, parts[1:], query, body)
            if parts[0] == "messages" and len(parts) >= 2:
                return self._message(method, mailbox, parts[1], parts[2:], body)
            raise GraphError(400, "BadRequest", f"Resource not found: {'/'.join(parts)}.")

        def _folders(
            self,
            method: str,
            mailbox: Mailbox,
            parts: list[str],
            query: dict[str, str],
            body: bytes,
        ) -> None:
            if method != "GET" and not (len(parts) >= 3 and parts[1] == "messages"):
                raise GraphError(405, "BadRequest", "Method not allowed.")
            if not parts:
                return self._folder_list(mailbox, mailbox.root_id, query)
            folder = self._find_folder(mailbox, parts[0])
            rest = parts[1:]
            if not rest:
                return self._json(200, self._folder_json(mailbox, folder))
            if rest == ["childFolders"]:
                return self._folder_list(mailbox, folder.id, query)
            if rest == ["messages", "delta"]:
                server.requests["GET delta"] += 1
                return self._delta(mailbox, folder, query)
            if len(rest) >= 2 and rest[0] == "messages":
                message = mailbox.messages.get(rest[1])
                if message is None or message.folder_id != folder.id:
                    raise GraphError(
                        404, "ErrorItemNotFound", "The specified object was not found in the store."
                    )
                return self._message(method, mailbox, rest[1], rest[2:], body)
            raise GraphError(400, "BadRequest", "Resource not found.")

        def _find_folder(self, mailbox: Mailbox, name: str) -> Folder:
            with server._lock:
                if name.lower() in WELL_KNOWN:
                    return next(f for f in mailbox.folders.values() if f.well_known == name.lower())
                folder = mailbox.folders.get(name)
            if folder is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            return folder

        def _folder_json(self, mailbox: Mailbox, folder: Folder) -> dict[str, Any]:
            with server._lock:
                total = sum(1 for m in mailbox.messages.values() if m.folder_id == folder.id)
                children = sum(1 for f in mailbox.folders.values() if f.parent_id == folder.id)
            return {
                "id": folder.id,
                "displayName": folder.display_name,
                "parentFolderId": folder.parent_id,
                "childFolderCount": children,
                "unreadItemCount": total,
                "totalItemCount": total,
                "isHidden": False,
            }

        def _folder_list(self, mailbox: Mailbox, parent_id: str, query: dict[str, str]) -> None:
            wanted = None
            filter_text = query.get("$filter", "")
            if filter_text:
                prefix = "displayName eq '"
                if not (filter_text.startswith(prefix) and filter_text.endswith("'")):
                    raise GraphError(400, "BadRequest", f"Invalid filter clause: {filter_text}")
                wanted = filter_text[len(prefix) : -1].replace("''", "'")
            with server._lock:
                folders = [
                    f
                    for f in mailbox.folders.values()
                    if f.parent_id == parent_id
                    and (wanted is None or f.display_name.lower() == wanted.lower())
                ]
            self._json(200, {"value": [self._folder_json(mailbox, f) for f in folders]})

        def _message(
            self, method: str, mailbox: Mailbox, message_id: str, rest: list[str], body: bytes
        ) -> None:
            with server._lock:
                message = mailbox.messages.get(message_id)
            if message is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if method == "GET" and rest == ["$value"]:
                server.requests["GET $value"] += 1
                if server.value_delay:
                    time.sleep(server.value_delay)
                mime = message.mime
                if server.mime_written_anew:
                    with server._lock:
                        server._value_fetches += 1
                        fetch = server._value_fetches
                    mime = b"X-MS-Exchange-Written: %d\r\n" % fetch + mime
                return self._send(200, mime, "text/plain")
            if method == "GET" and not rest:
                return self._json(200, self._message_json(message, None))
            if method == "POST" and rest == ["move"]:
                server.requests["POST move"] += 1
                self._maybe_fail("POST move")
                try:
                    destination_id = json.loads(body or b"{}")["destinationId"]
                except (ValueError, KeyError) as exc:
                    raise GraphError(
                        400, "ErrorInvalidRequest", "destinationId is missing."
                    ) from exc
                destination = self._find_folder(mailbox, destination_id)
                moved = self._move(mailbox, message, destination, keep_id=self._immutable_ids())
                return self._json(201, self._message_json(moved, None))
            if method == "DELETE" and not rest:
                server.requests["DELETE message"] += 1
                self._maybe_fail("DELETE message")
                deleted = self._find_folder(mailbox, "deleteditems")
                self._move(mailbox, message, deleted, keep_id=self._immutable_ids())
                return self._send(204, b"", "")
            raise GraphError(405, "BadRequest", "Method not allowed.")

        def _maybe_fail(self, what: str) -> None:
            with server._lock:
                if server._failures[what] > 0:
                    server._failures[what] -= 1
                    raise GraphError(
                        500, "ErrorInternalServerError", "An internal server error occurred."
                    )

        def _immutable_ids(self) -> bool:
            """Whether the request asks for immutable ids (`Prefer: IdType="ImmutableId"`,
            alone or among other preferences)."""
            preferences = self.headers.get("Prefer", "").split(",")
            return any(p.strip() == 'IdType="ImmutableId"' for p in preferences)

        def _move(
            self, mailbox: Mailbox, message: StoredMessage, to: Folder, *, keep_id: bool = False
        ) -> StoredMessage:
            """Exchange gives a moved message a new id, unless ImmutableId is asked for."""
            with server._lock:
                mailbox.messages.pop(message.id, None)
                moved = StoredMessage(
                    id=message.id if keep_id else _new_id("AAMkAG"),
                    mime=message.mime,
                    received=message.received,
                    subject=message.subject,
                    folder_id=to.id,
                )
                mailbox.messages[moved.id] = moved
                server._event(mailbox, message.id, message.folder_id, "")
                server._event(mailbox, moved.id, "", to.id)
            return moved

        def _message_json(self, message: StoredMessage, select: set[str] | None) -> dict:
            data = {
                "@odata.type": "#microsoft.graph.message",
                "@odata.etag": f'W/"{message.id[-12:]}"',
                "id": message.id,
                "receivedDateTime": _iso(message.received),
                "subject": message.subject,
                "parentFolderId": message.folder_id,
                "isRead": False,
            }
            if select:
                data = {k: v for k, v in data.items() if k.startswith("@") or k in select}
                data["id"] = message.id
            return data

        # Delta ---------------------------------------------------------------------------

        def _delta(self, mailbox: Mailbox, folder: Folder, query: dict[str, str]) -> None:
            """One page of a delta round over the folder.

            A round covers the changes between two points of the mailbox's event sequence
            (`since`, 0 for the first sync, and `upto`, fixed when the round starts), in
            the order of their last event, paged by the (sequence, id) of the last item
            given: messages deleted while the client pages do not shift the pages."""
            page_size = self._page_size()
            select = (
                {s.strip() for s in query["$select"].split(",")} if "$select" in query else None
            )
            server.delta_requests.append(
                "delta" if "$deltatoken" in query else "next" if "$skiptoken" in query else "start"
            )
            if "$deltatoken" in query:
                token = _decode_token(query["$deltatoken"])
                since, upto, after = token["s"], None, None
            elif "$skiptoken" in query:
                token = _decode_token(query["$skiptoken"])
                since, upto, after = token["s"], token["u"], tuple(token["a"])
            else:
                token = {"f": folder.id, "e": mailbox.epoch}
                since, upto, after = 0, None, None
            if token.get("e") != mailbox.epoch or token.get("f") != folder.id:
                raise GraphError(
                    410,
                    "SyncStateNotFound",
                    "The sync state generation is not found. The delta token is expired and "
                    "data must be synchronized again.",
                )
            with server._lock:
                if upto is None:
                    upto = mailbox.events[-1][0] if mailbox.events else 0
                entries = self._changes(mailbox, folder, since=since, upto=upto)
            entries = [e for e in entries if after is None or (e[0], e[1]) > after]
            page, more = entries[:page_size], len(entries) > page_size
            value = []
            for _seq, _id, item in page:
                if isinstance(item, StoredMessage):
                    value.append(self._message_json(item, select))
                else:
                    value.append(item)
            base = (
                f"{server.url}/users/{quote(mailbox.id)}/mailFolders/{quote(folder.id)}"
                "/messages/delta"
            )
            answer: dict[str, Any] = {"value": value}
            if more:
                last = page[-1]
                skip = {"f": folder.id, "e": mailbox.epoch, "s": since, "u": upto}
                skip["a"] = [last[0], last[1]]
                answer["@odata.nextLink"] = f"{base}?$skiptoken={_encode_token(skip)}"
            else:
                delta = {"f": folder.id, "e": mailbox.epoch, "s": upto}
                answer["@odata.deltaLink"] = f"{base}?$deltatoken={_encode_token(delta)}"
            self._json(200, answer, Preference_Applied=f"odata.maxpagesize={page_size}")

        def _page_size(self) -> int:
            for preference in self.headers.get("Prefer", "").split(","):
                name, _, value = preference.strip().partition("=")
                if name == "odata.maxpagesize" and value.isdigit():
                    return max(1, min(int(value), MAX_PAGE_SIZE))
            return DEFAULT_PAGE_SIZE

        def _changes(
            self, mailbox: Mailbox, folder: Folder, *, since: int, upto: int
        ) -> list[tuple[int, str, Any]]:
            """(sequence, id, message or @removed entry), by sequence: where each message
            was at `since` and at `upto`."""
            where_then: dict[str, str] = {}
            where_now: dict[str, str] = {}
            last_seq: dict[str, int] = {}
            touched: set[str] = set()
            for seq, message_id, left, entered in mailbox.events:
                if seq > upto:
                    break
                location = entered if entered else ""
                if seq <= since:
                    where_then[message_id] = location
                elif folder.id in (left, entered):
                    touched.add(message_id)
                    last_seq[message_id] = seq
                where_now[message_id] = location
            entries: list[tuple[int, str, Any]] = []
            for message_id in touched:
                now_here = where_now.get(message_id) == folder.id
                was_here = where_then.get(message_id) == folder.id
                seq = last_seq[message_id]
                if now_here:
                    stored = mailbox.messages.get(message_id)
                    if stored is None:  # gone since `upto`: report what it was then
                        continue
                    entries.append((seq, message_id, stored))
                elif since and (was_here or self._passed_through(mailbox, message_id, folder)):
                    entries.append(
                        (
                            seq,
                            message_id,
                            {
                                "@odata.type": "#microsoft.graph.message",
                                "id": message_id,
                                "@removed": {"reason": "deleted"},
                            },
                        )
                    )
            entries.sort(key=lambda entry: (entry[0], entry[1]))
            return entries

        @staticmethod
        def _passed_through(mailbox: Mailbox, message_id: str, folder: Folder) -> bool:
            return any(
                event[1] == message_id and folder.id in (event[2], event[3])
                for event in mailbox.events
            )

        # Sending -------------------------------------------------------------------------

        def _send_mail(self, mailbox: Mailbox, body: bytes, token: Any) -> None:
            if token.scope.rstrip().endswith("/.default"):
                if "Mail.Send" not in server.app(token.client_id).roles:
                    raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            elif "Mail.Send" not in token.scope:
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            if not self.headers.get("Content-Type", "").startswith("text/plain"):
                raise GraphError(
                    400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME."
                )
            try:
                mime = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise GraphError(
                    400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME."
                ) from exc
            if len(body) > SENDMAIL_MAX_BYTES:
                raise GraphError(
                    413,
                    "RequestEntityTooLarge",
                    "The maximum request length supported is 4MB.",
                )
            self._maybe_fail("POST sendMail")
            message = email.message_from_bytes(mime)
            recipients = getaddresses(
                [str(v) for name in ("To", "Cc", "Bcc") for v in message.get_all(name, [])]
            )
            for _name, address in recipients:
                if address.lower() in server.unknown_recipients:
                    raise GraphError(
                        400,
                        "ErrorInvalidRecipients",
                        f"At least one recipient is not valid., Recipient '{address}' is not "
                        "resolved. All recipients must be resolved before a message can be "
                        "submitted.",
                    )
            with server._lock:
                server.sent.append((mailbox.address, mime))
            server.deliver(mailbox.address, mime, folder="sentitems")
            self._send(202, b"", "")

        # Subscriptions -------------------------------------------------------------------

        def _subscriptions(self, method: str, parts: list[str], body: bytes, token: Any) -> None:
            if method == "POST" and not parts:
                return self._create_subscription(body, token)
            if len(parts) != 1:
                raise GraphError(400, "BadRequest", "Resource not found.")
            with server._lock:
                subscription = server.subscriptions.get(parts[0])
            if subscription is None:
                raise GraphError(404, "ResourceNotFound", f"The object '{parts[0]}' doesn't exist.")
            if method == "GET":
                return self._json(200, self._subscription_json(subscription))
            if method == "DELETE":
                with server._lock:
                    server.subscriptions.pop(subscription.id, None)
                return self._send(204, b"", "")
            if method == "PATCH":
                data = json.loads(body or b"{}")
                subscription.expires_at = self._expiry(data.get("expirationDateTime", ""))
                subscription.renewals += 1
                return self._json(200, self._subscription_json(subscription))
            raise GraphError(405, "BadRequest", "Method not allowed.")

        def _expiry(self, text: str) -> datetime:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise GraphError(400, "InvalidRequest", "expirationDateTime is invalid.") from exc
            now = datetime.now(UTC)
            if moment <= now:
                raise GraphError(400, "InvalidRequest", "expirationDateTime is in the past.")
            if moment > now + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES, seconds=30):
                raise GraphError(
                    400,
                    "InvalidRequest",
                    "Subscription expiration can only be 4230 minutes in the future.",
                )
            return moment

        def _create_subscription(self, body: bytes, token: Any) -> None:
            try:
                data = json.loads(body)
                resource = data["resource"]
                notification_url = data["notificationUrl"]
                change_type = data["changeType"]
            except (ValueError, KeyError) as exc:
                raise GraphError(400, "InvalidRequest", f"Missing property: {exc}.") from exc
            if not notification_url.startswith("https://"):
                raise GraphError(400, "InvalidRequest", "The notification URL must use https.")
            expires_at = self._expiry(data.get("expirationDateTime", ""))
            # "users/{id}/mailFolders('inbox')/messages" or ".../mailFolders/{id}/messages"
            path = resource.strip("/").replace("('", "/").replace("')", "")
            pieces = path.split("/")
            if len(pieces) != 5 or pieces[0].lower() != "users" or pieces[4] != "messages":
                raise GraphError(400, "InvalidRequest", f"Unsupported resource {resource}.")
            mailbox = self._mailbox(pieces[1], token)
            folder = self._find_folder(mailbox, pieces[3])
            lifecycle_url = data.get("lifecycleNotificationUrl", "")
            for url in filter(None, {notification_url, lifecycle_url}):
                if not server._validate(url):
                    raise GraphError(
                        400,
                        "ValidationError",
                        "Subscription validation request failed. Notification endpoint must "
                        "respond with 200 OK to validation request.",
                    )
            subscription = Subscription(
                id=str(uuid.uuid4()),
                resource=resource,
                change_type=change_type,
                notification_url=notification_url,
                lifecycle_url=lifecycle_url,
                client_state=data.get("clientState", ""),
                expires_at=expires_at,
                mailbox=mailbox.address.lower(),
                folder_id=folder.id,
                client_id=token.client_id,
            )
            with server._lock:
                server.subscriptions[subscription.id] = subscription
            self._json(201, self._subscription_json(subscription))

        @staticmethod
        def _subscription_json(subscription: Subscription) -> dict[str, Any]:
            return {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
                "id": subscription.id,
                "resource": subscription.resource,
                "changeType": subscription.change_type,
                "clientState": subscription.client_state or None,
                "notificationUrl": subscription.notification_url,
                "lifecycleNotificationUrl": subscription.lifecycle_url or None,
                "expirationDateTime": _iso(subscription.expires_at),
                "applicationId": subscription.client_id,
            }

    return Handler


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def graph_server(oauth_server: OAuthServer) -> Iterator[GraphServer]:
    server = GraphServer(oauth_server)
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def graph(graph_server: GraphServer, oauth_settings: OAuthServer, settings: Any) -> GraphServer:
    """Point the desk at the local Graph (and the local token endpoint, by oauth_settings)."""
    settings.MICROSOFT_GRAPH_URL = graph_server.url
    with graph_server._lock:
        graph_server._throttle.clear()
        graph_server._failures.clear()
        graph_server.unknown_recipients.clear()
    graph_server.delta_requests.clear()
    graph_server.value_delay = 0.0
    graph_server.mime_written_anew = False
    graph_server.notify_new_mail = True
    return graph_server
