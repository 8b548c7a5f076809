"""A real SMTP server (aiosmtpd on loopback) for the whole test run.

The root conftest registers this module (`pytest_plugins`). One server runs three listeners
on free ports, in one event loop in a background thread:

- plain: no TLS at all, AUTH allowed in clear text (only here, for the tests);
- STARTTLS: TLS required before anything else, AUTH only after it;
- implicit TLS (SSL/TLS from the first byte).

Every listener accepts the login `desk@desk.test` with `smtp_server.password` and refuses
any other. Accepted messages are recorded in `smtp_server.messages`. Some addresses are
refused on purpose: any recipient at refused.test (550 5.1.1), any sender at blocked.test
(553). `stop()` takes every listener down (and drops open connections), `start()` brings
them back on the same ports.

AUTH XOAUTH2 is offered too; it succeeds only while `xoauth2_checker` is set (by the OAuth
tests: a callable (user, token) -> bool that asks their OAuth server) and says yes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from integrations.models import EmailIntegration
from tests.conftest import free_port
from tests.dovecot import _self_signed_certificate

USERNAME = "desk@desk.test"
REFUSED_RECIPIENT_DOMAIN = "refused.test"
BLOCKED_SENDER_DOMAIN = "blocked.test"
SERVER_NAME = "smtp.desk.test"
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    listener: str
    authenticated_as: str | None


class _Handler:
    """What the server does with each command: refuse the test addresses, record the rest."""

    def __init__(self, server: SmtpServer, listener: str) -> None:
        self.server = server
        self.listener = listener

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        if address.lower().endswith("@" + BLOCKED_SENDER_DOMAIN):
            return f"553 5.7.1 <{address}>: Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address.lower().endswith("@" + REFUSED_RECIPIENT_DOMAIN):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope) -> str:
        login = session.auth_data.login.decode() if session.authenticated else None
        number = self.server._record(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                raw=envelope.original_content or envelope.content,
                listener=self.listener,
                authenticated_as=login,
            )
        )
        return f"250 2.0.0 Ok: queued as T{number:06d}"


@dataclass
class SmtpServer:
    host: str
    plain_port: int
    starttls_port: int
    tls_port: int
    password: str
    ca_pem: str
    directory: Path
    _server_context: ssl.SSLContext = field(repr=False, default=None)  # type: ignore[assignment]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _messages: list[ReceivedMessage] = field(default_factory=list, repr=False)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list, repr=False)
    _protocols: set[SMTP] = field(default_factory=set, repr=False)
    connections: int = 0
    xoauth2_checker: Callable[[str, str], bool] | None = field(default=None, repr=False)

    # What arrived ----------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A copy of what was accepted so far, in order of arrival."""
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self.connections = 0

    def _record(self, message: ReceivedMessage) -> int:
        with self._lock:
            self._messages.append(message)
            return next(self._numbers)

    def port_for(self, encryption: str) -> int:
        """The listener an integration with this encryption connects to."""
        if encryption == "ssl":
            return self.tls_port
        if encryption in ("tls", "tls1.2"):
            return self.starttls_port
        return self.plain_port

    # Running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the three ports (the same ones after a stop())."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="aiosmtpd", daemon=True
            )
            self._thread.start()
        if self._servers:
            return
        self._call(self._listen())

    def stop(self) -> None:
        """Close the listeners and every open connection: clients then see a dead server."""
        if self._loop is None or not self._servers:
            return
        self._call(self._close())

    def shutdown(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None

    def _call(self, coroutine: Any) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=START_TIMEOUT_SECONDS)

    async def _listen(self) -> None:
        listeners = (
            # name, port, implicit TLS, keyword arguments of aiosmtpd's SMTP
            ("plain", self.plain_port, False, {"auth_require_tls": False}),
            (
                "starttls",
                self.starttls_port,
                False,
                {"tls_context": self._server_context, "require_starttls": True},
            ),
            # aiosmtpd 1.4.6 offers no AUTH on an implicit-TLS listener unless this is off
            # (aio-libs/aiosmtpd#281); the connection is encrypted all the same.
            ("tls", self.tls_port, True, {"auth_require_tls": False}),
        )
        loop = asyncio.get_running_loop()
        for name, port, implicit, options in listeners:
            self._servers.append(
                await loop.create_server(
                    self._factory(name, options),
                    host=self.host,
                    port=port,
                    ssl=self._server_context if implicit else None,
                    reuse_address=True,
                )
            )

    def _factory(self, name: str, options: dict[str, Any]) -> Callable[[], SMTP]:
        handler = _Handler(self, name)

        def make() -> SMTP:
            with self._lock:
                self.connections += 1
            protocol = _TrackedSMTP(
                handler,
                hostname=SERVER_NAME,
                authenticator=self._authenticate,
                timeout=60,
                **options,
            )
            protocol._tracked_in = self._protocols
            protocol._smtp_server = self
            self._protocols.add(protocol)
            return protocol

        return make

    async def _close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        self._protocols.clear()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=2)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login == USERNAME.encode() and secrets.compare_digest(
            auth_data.password, self.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _TrackedSMTP(SMTP):
    """Forgets itself when its connection ends, so stop() only aborts live ones."""

    _tracked_in: set[SMTP]
    _smtp_server: SmtpServer

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        """SASL XOAUTH2 (aiosmtpd has none): `user=...^Aauth=Bearer <token>^A^A` in base64.
        A refusal is a 334 challenge with the error; the client answers with an empty line."""
        try:
            # args: the mechanism, then the initial response when the client sent one.
            if len(args) > 1:
                decoded: Any = base64.b64decode(args[1].encode(), validate=True)
            else:
                decoded = await self.challenge_auth("", encode_to_b64=False)
                if decoded is MISSING:
                    return AuthResult(success=False, handled=True)  # aiosmtpd said 501
            fields = dict(
                part.split("=", 1) for part in decoded.decode().split("\x01") if "=" in part
            )
        except (ValueError, UnicodeDecodeError):
            await self.push("501 5.5.2 Can't decode XOAUTH2")
            return AuthResult(success=False, handled=True)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        checker = self._smtp_server.xoauth2_checker
        if checker is not None and checker(user, token):
            return AuthResult(
                success=True, handled=False, auth_data=LoginPassword(user.encode(), b"")
            )
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": ""})
        await self.challenge_auth(base64.b64encode(error.encode()).decode(), encode_to_b64=False)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535

    def connection_lost(self, *args: Any) -> None:
        self._tracked_in.discard(self)
        super().connection_lost(*args)


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def start_smtp_server() -> SmtpServer:
    # aiosmtpd logs every command at INFO (thousands of lines for one batch test) and warns
    # about its own deprecated login_data on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    directory = Path(tempfile.mkdtemp(prefix="servicedesk-smtpd-"))
    try:
        ca_pem, cert_path, key_path = _self_signed_certificate(directory)
        for attempt in range(3):
            server = SmtpServer(
                host="127.0.0.1",
                plain_port=free_port(),
                starttls_port=free_port(),
                tls_port=free_port(),
                password=secrets.token_urlsafe(12),
                ca_pem=ca_pem,
                directory=directory,
                _server_context=_server_context(cert_path, key_path),
            )
            try:
                server.start()
                return server
            except OSError:
                # A port was taken between choosing and binding it: try others.
                server.shutdown()
                if attempt == 2:
                    raise
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    server = start_smtp_server()
    try:
        yield server
    finally:
        server.shutdown()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def smtp_integration(
    smtp_server: SmtpServer, make_integration: Callable[..., EmailIntegration]
) -> Callable[..., EmailIntegration]:
    """Make an outgoing integration that sends through the shared aiosmtpd.

    `smtp_integration(encryption="ssl", smtp_password="wrong")`; any other model field can be
    overridden the same way. The server is started again if a test left it stopped.
    """
    numbers = itertools.count(1)
    smtp_server.start()

    def make(encryption: str = "tls", **overrides: Any) -> EmailIntegration:
        fields: dict[str, Any] = {
            "name": f"SMTP {encryption} {next(numbers)} {secrets.token_hex(3)}",
            "outgoing_enabled": True,
            "incoming_enabled": False,
            "email_address": USERNAME,
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port_for(encryption),
            "smtp_encryption": encryption,
            "smtp_username": USERNAME,
            "smtp_password": smtp_server.password,
            "ca_certificate": smtp_server.ca_pem,
            "verify_certificates": True,
        }
        fields.update(overrides)
        return make_integration(incoming_password=None, **fields)

    return make
