"""SMTP sender: one session kept over batches of envelopes, and errors an admin can act on.

`SmtpSender` opens one session with the integration's encryption and credentials, sends
every envelope over it, and answers with one `Delivery` per envelope. Only a session that
cannot be opened at all (connection refused, TLS, certificate, AUTH) raises `TransportError`;
what goes wrong with one message (sender or recipients refused, DATA refused, the connection
lost halfway) is that message's `Delivery`, so the rest of the batch still goes out and the
outbox records an answer for every row.

aiosmtplib is asynchronous; the desk's callers (Celery tasks, management commands, views) are
not, so each sender runs its own event loop (`asyncio.Runner`). It therefore cannot be used
from a thread that already runs an event loop: use it from a worker thread there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aiosmtplib
from django.core.mail.utils import DNS_NAME

from integrations.models import EmailIntegration, Encryption
from mailworker.senders.base import DEFAULT_TIMEOUT_SECONDS, Delivery, Envelope, Sender
from mailworker.transport.errors import TransportError, TransportErrorKind, kind_of_os_error
from mailworker.transport.oauth import access_token_for, expire_access_token
from mailworker.transport.tls import describe_connection_error, ssl_context_for
from mailworker.transport.xoauth2 import xoauth2_base64

T = TypeVar("T")

# The form field of an integration that each kind of connection failure concerns.
SMTP_FIELDS = {
    TransportErrorKind.CONNECTION_REFUSED: "smtp_port",
    TransportErrorKind.TLS_HANDSHAKE: "smtp_encryption",
    TransportErrorKind.CERTIFICATE: "ca_certificate",
}


class SmtpSender(Sender):
    """Batches of envelopes over one SMTP session, kept open between batches so that the
    connection, TLS handshake and login are paid once, while the caller records what became
    of each batch before it sends the next. A batch that lost the connection makes the next
    one connect again. A context manager: the session ends (QUIT) when it exits."""

    def __init__(
        self, integration: EmailIntegration, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        super().__init__(integration, timeout=timeout)
        self._runner: asyncio.Runner | None = None
        self._session: _Session | None = None
        self._client: aiosmtplib.SMTP | None = None

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coroutine)

    def open(self) -> None:
        """Open the session unless one is open and still answers."""
        if self._client is None or not self._run(_still_answers(self._client)):
            self._connect()

    def close(self) -> None:
        """End the session (QUIT) and the event loop."""
        try:
            if self._client is not None:
                self._run(_quit(self._client))
                self._client = None
        finally:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def send(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """One Delivery per envelope, in order. Raises TransportError when no session can be
        opened (nothing of the batch was sent)."""
        if not envelopes:
            return []
        self.open()
        deliveries, closed_at = self._send_batch(list(envelopes))
        if closed_at is None:
            return deliveries
        # The server refused an email and ended the session (421: enough messages for one
        # connection, or going down): that email and the rest go over a new session, once.
        # A session kept over batches meets such a limit where a session per batch did not.
        try:
            self._connect()
        except TransportError:
            return deliveries
        rest, _closed_again = self._send_batch(list(envelopes[closed_at:]))
        return deliveries[:closed_at] + rest

    def _send_batch(self, envelopes: list[Envelope]) -> tuple[list[Delivery], int | None]:
        assert self._session is not None and self._client is not None
        return self._run(_send_batch(self._session, self._client, envelopes))

    def _connect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if not uses_xoauth2(self.integration):
            self._open(token=None)
            return
        # The token comes from the database, which cannot be used inside the event loop: get
        # it first. A cached token the server refuses (revoked early) is refreshed once.
        token = _access_token(self.integration)
        try:
            self._open(token=token)
        except TokenRefused:
            expire_access_token(self.integration, token)
            self._open(token=_access_token(self.integration))

    def _open(self, *, token: str | None) -> None:
        session = _Session(self.integration, timeout=self.timeout, token=token)
        self._client = self._run(session.open())
        self._session = session


def uses_xoauth2(integration: EmailIntegration) -> bool:
    """An OAuth 2.0 integration sends with its token, unless an SMTP password was entered
    (a relay of its own). Never a Microsoft Graph token: its audience is Graph, which SMTP
    refuses (a relay without login then gets no AUTH at all)."""
    return (
        integration.uses_oauth
        and not integration.uses_graph_token
        and not integration.smtp_password
    )


def _access_token(integration: EmailIntegration) -> str:
    """The integration's token. The token code raises the transports' own errors: needs
    reconnect (permanent), or the token endpoint down (temporary)."""
    return access_token_for(integration)


class TokenRefused(TransportError):
    """The server refused the OAuth 2.0 access token."""


# The session ------------------------------------------------------------------------------


class _Session:
    """Opens the connection the integration describes; every failure becomes TransportError."""

    def __init__(
        self, integration: EmailIntegration, *, timeout: float, token: str | None = None
    ) -> None:
        self.integration = integration
        self.token = token
        self.host = integration.smtp_host.strip()
        self.port = integration.effective_smtp_port
        self.encryption = integration.smtp_encryption
        self.timeout = timeout

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self) -> aiosmtplib.SMTP:
        context = self._tls_context()
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.encryption == Encryption.SSL,
            # STARTTLS is done below, by hand: aiosmtplib would quietly stay in clear text
            # when the server does not offer it.
            start_tls=False,
            tls_context=context,
            timeout=self.timeout,
            # Django's cached FQDN: socket.getfqdn() can wait for DNS on every connection.
            local_hostname=str(DNS_NAME),
        )
        try:
            await self._run(client.connect(), action="connecting")
            await self._run(client.ehlo(), action="greeting the server (EHLO)")
            if self.encryption in (Encryption.TLS, Encryption.TLS12):
                await self._start_tls(client, context)
            if self.token is not None:
                await self._log_in_xoauth2(client, self.token)
            elif self.integration.smtp_username:
                await self._log_in(client)
        except BaseException:
            client.close()
            raise
        return client

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.encryption == Encryption.NONE:
            return None
        try:
            context = ssl_context_for(self.integration, encryption=self.encryption)
        except (ssl.SSLError, ValueError) as exc:
            raise TransportError(
                kind=TransportErrorKind.CERTIFICATE,
                field="ca_certificate",
                message=f"The CA certificate of the integration cannot be used: {exc}.",
                temporary=False,
            ) from exc
        return context

    async def _start_tls(self, client: aiosmtplib.SMTP, context: ssl.SSLContext | None) -> None:
        if not client.supports_extension("starttls"):
            raise TransportError(
                kind=TransportErrorKind.TLS_HANDSHAKE,
                field="smtp_encryption",
                message=(
                    f"{self.where} does not offer STARTTLS, which the integration's "
                    "encryption requires: nothing was sent in clear text. Choose SSL/TLS "
                    "(usually port 465) if the server has it, or check the port."
                ),
                temporary=False,
            )
        await self._run(client.starttls(tls_context=context), action="starting TLS (STARTTLS)")
        # The server's extensions (AUTH among them) must be asked again over TLS (RFC 3207).
        await self._run(client.ehlo(), action="greeting the server over TLS (EHLO)")

    async def _log_in(self, client: aiosmtplib.SMTP) -> None:
        username = self.integration.smtp_username
        if not client.supports_extension("auth"):
            clear = client.get_transport_info("sslcontext") is None
            raise TransportError(
                kind=TransportErrorKind.AUTHENTICATION,
                field="smtp_encryption" if clear else "smtp_username",
                message=(
                    f"{self.where} does not offer authentication (AUTH)"
                    + (
                        " over a clear-text connection: choose STARTTLS or SSL/TLS."
                        if clear
                        else ": clear the username to send without logging in."
                    )
                ),
                temporary=False,
            )
        try:
            await self._run(
                client.login(username, self.integration.smtp_password),
                action=f"logging in as {username}",
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise TransportError(
                kind=TransportErrorKind.AUTHENTICATION,
                field="smtp_password",
                message=(
                    f"Authentication failed: {self.where} refused the login of {username} "
                    f"({_answer(exc)}). Check the username and password."
                ),
                temporary=_is_temporary(exc.code),
            ) from exc

    async def _log_in_xoauth2(self, client: aiosmtplib.SMTP, token: str) -> None:
        """AUTH XOAUTH2 with the initial response, as Microsoft and Google document it.
        aiosmtplib has no XOAUTH2, so the two commands are sent here."""
        username = self.integration.smtp_username or self.integration.oauth_mailbox
        if "xoauth2" not in client.server_auth_methods:
            raise TransportError(
                kind=TransportErrorKind.AUTHENTICATION,
                field="smtp_host",
                message=(
                    f"{self.where} does not offer OAuth 2.0 (AUTH XOAUTH2): use "
                    "smtp.office365.com (Microsoft 365) or smtp.gmail.com (Google), port "
                    "587 with STARTTLS."
                ),
                temporary=False,
            )
        action = f"logging in as {username} with OAuth 2.0 (XOAUTH2)"
        response = await self._run(
            client.execute_command(b"AUTH", b"XOAUTH2", xoauth2_base64(username, token).encode()),
            action=action,
        )
        if response.code == 334:
            # Refused: the challenge carries the error; an empty line ends the exchange.
            response = await self._run(client.execute_command(b""), action=action)
        if response.code != 235:
            raise TokenRefused(
                kind=TransportErrorKind.AUTHENTICATION,
                field="",
                message=(
                    f"Authentication failed: {self.where} refused the OAuth 2.0 token for "
                    f"{username} ({response.code} {response.message}). Check that the app "
                    "may send as this mailbox (SMTP AUTH enabled for it at Microsoft)."
                ),
                temporary=_is_temporary(response.code),
            )

    async def _run(self, step, *, action: str):
        """Await one step of opening the session; turn what it raises into TransportError."""
        try:
            return await step
        except (TransportError, aiosmtplib.SMTPAuthenticationError):
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise TransportError(
                kind=TransportErrorKind.PROTOCOL,
                field="smtp_host",
                message=f"{self.where} answered {_answer(exc)} while {action}.",
                temporary=_is_temporary(exc.code),
            ) from exc
        except (aiosmtplib.SMTPException, OSError, EOFError) as exc:
            raise self._connection_problem(exc, action=action) from exc

    def _connection_problem(self, exc: BaseException, *, action: str) -> TransportError:
        cause = _root_cause(exc)
        message = describe_connection_error(cause, host=self.host, port=self.port, action=action)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TransportError(
                kind=TransportErrorKind.CERTIFICATE,
                field="ca_certificate",
                message=(
                    f"The server certificate of {self.where} is not trusted "
                    f"({cause.verify_message}). Paste the CA certificate that signed it on the "
                    "integration, or turn off certificate verification (test servers only)."
                ),
                temporary=False,
            )
        if isinstance(cause, OSError | EOFError):
            kind = kind_of_os_error(cause)
            return TransportError(
                kind=kind,
                field=SMTP_FIELDS.get(kind, "smtp_host"),
                message=message,
                temporary=kind != TransportErrorKind.TLS_HANDSHAKE,
            )
        # aiosmtplib's own words: "Connection lost", "Timed out waiting for ...", ...
        text = getattr(cause, "message", None) or str(cause)
        return TransportError(
            kind=TransportErrorKind.CONNECTION_LOST,
            field="smtp_host",
            message=f"The connection to {self.where} failed while {action}: {text}.",
            temporary=True,
        )


# The batch ------------------------------------------------------------------------------


async def _send_batch(
    session: _Session, client: aiosmtplib.SMTP, envelopes: list[Envelope]
) -> tuple[list[Delivery], int | None]:
    """One Delivery per envelope, and the index of the envelope the server refused as it
    closed the session (None when it did not)."""
    deliveries: list[Delivery] = []
    closed_at = None
    for envelope in envelopes:
        if not client.is_connected:
            break
        try:
            delivery = await _deliver(client, envelope)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # Lost halfway: this message and the rest wait for the next attempt. Whether
            # a message cut off during DATA arrived is unknowable; retrying may repeat it.
            problem = _lost(session, exc)
            deliveries.append(_not_sent(problem))
            # A timed-out connection may still look open: do not wait for a QUIT too.
            client.close()
            break
        deliveries.append(delivery)
        if not delivery.accepted and not client.is_connected:
            # Refused with an answer that ended the session (aiosmtplib closes on 421, "too
            # many messages", "shutting down"): the server said no, so it may go again.
            closed_at = len(deliveries) - 1
            break
    if len(deliveries) < len(envelopes):
        problem = TransportError(
            kind=TransportErrorKind.CONNECTION_LOST,
            field="smtp_host",
            message=f"The connection to {session.where} was lost before this email was sent.",
            temporary=True,
        )
        deliveries.extend(_not_sent(problem) for _ in envelopes[len(deliveries) :])
    return deliveries, closed_at


async def _deliver(client: aiosmtplib.SMTP, envelope: Envelope) -> Delivery:
    addresses = [envelope.sender, *envelope.recipients]
    options = ["SMTPUTF8"] if any(not address.isascii() for address in addresses) else None
    try:
        refused, response = await client.sendmail(
            envelope.sender, envelope.recipients, envelope.message, mail_options=options
        )
    except aiosmtplib.SMTPSenderRefused as exc:
        return _not_sent(
            TransportError(
                kind=TransportErrorKind.SENDER_REFUSED,
                field="email_address",
                message=(
                    f"The server refused the sender {envelope.sender} ({_answer(exc)}). "
                    "Check the email address: the SMTP account must be allowed to send as it."
                ),
                temporary=_is_temporary(exc.code),
            )
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = {error.recipient: _answer(error) for error in exc.recipients}
        listed = "; ".join(f"{address}: {answer}" for address, answer in refused.items())
        return Delivery(
            accepted=False,
            response="",
            refused=refused,
            error=TransportError(
                kind=TransportErrorKind.RECIPIENT_REFUSED,
                field="",
                message=f"The server refused every recipient: {listed}.",
                temporary=all(_is_temporary(error.code) for error in exc.recipients),
            ),
        )
    except aiosmtplib.SMTPDataError as exc:
        return _not_sent(
            TransportError(
                kind=TransportErrorKind.MESSAGE_REFUSED,
                field="",
                message=f"The server refused the email itself ({_answer(exc)}).",
                temporary=_is_temporary(exc.code),
            )
        )
    except aiosmtplib.SMTPNotSupported as exc:
        return _not_sent(
            TransportError(
                kind=TransportErrorKind.MESSAGE_REFUSED,
                field="",
                message=f"{exc.message}.",
                temporary=False,
            )
        )
    except ValueError as exc:
        # aiosmtplib checks every address before sending anything: a line break or a
        # malformed address never reaches the server.
        return _not_sent(
            TransportError(
                kind=TransportErrorKind.RECIPIENT_REFUSED,
                field="",
                message=f"An address cannot be sent to: {exc}.",
                temporary=False,
            )
        )
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == 421:  # the server is closing the connection
            raise aiosmtplib.SMTPServerDisconnected(_answer(exc)) from exc
        return _not_sent(
            TransportError(
                kind=TransportErrorKind.PROTOCOL,
                field="",
                message=f"The server answered {_answer(exc)}.",
                temporary=_is_temporary(exc.code),
            )
        )
    return Delivery(
        accepted=True,
        response=_data_answer(response),
        refused={address: _answer(answer) for address, answer in refused.items()},
    )


async def _still_answers(client: aiosmtplib.SMTP) -> bool:
    """Whether a session kept from the previous batch can take the next one: a server may
    have closed it meanwhile (idle, or enough messages for one connection). A NOOP costs a
    round trip; a batch sent into a closed session would wait for its retry."""
    if not client.is_connected:
        return False
    try:
        await client.noop()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
        return False
    return True


async def _quit(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        # Everything is sent: a QUIT that fails changes nothing.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
    client.close()


# Helpers --------------------------------------------------------------------------------


def _not_sent(error: TransportError) -> Delivery:
    return Delivery.failed(error)


def _lost(session: _Session, exc: BaseException) -> TransportError:
    timed_out = isinstance(exc, TimeoutError)
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return TransportError(
        kind=TransportErrorKind.TIMEOUT if timed_out else TransportErrorKind.CONNECTION_LOST,
        field="smtp_host",
        message=f"The connection to {session.where} was lost while sending ({text}).",
        temporary=True,
    )


def _answer(exc) -> str:
    """The server's code and words, as a person would quote them: "550 5.1.1 No such user"."""
    return f"{exc.code} {exc.message}".strip()


def _data_answer(message: str) -> str:
    # aiosmtplib gives the text of the answer to DATA without its code: 250 is the only
    # code that reaches this point.
    return f"250 {message}".strip()


def _is_temporary(code: int) -> bool:
    return 400 <= code < 500


def _root_cause(exc: BaseException) -> BaseException:
    """aiosmtplib wraps OSError and ssl errors in its own (SMTPConnectError from an OSError):
    the innermost OSError says what really happened. Below it there may be asyncio's
    CancelledError of a timeout, which says nothing to an admin."""
    found, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError | EOFError):
            found = exc
        exc = exc.__cause__
    return found
