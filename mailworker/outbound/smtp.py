"""SMTP transport: one connection per batch of envelopes, and errors an admin can act on.

`send_envelopes` opens one session with the integration's encryption and credentials, sends
every envelope over it, and answers with one `Delivery` per envelope. Only a session that
cannot be opened at all (connection refused, TLS, certificate, AUTH) raises `SmtpFailure`;
what goes wrong with one message (sender or recipients refused, DATA refused, the connection
lost halfway) is that message's `Delivery`, so the rest of the batch still goes out and the
outbox records an answer for every row. `SmtpSender` keeps one session open over several
batches, for a caller that records each batch's outcome before sending the next.

aiosmtplib is asynchronous; the desk's callers (Celery tasks, management commands, views) are
not, so each sender runs its own event loop (`asyncio.Runner`). It therefore cannot be used
from a thread that already runs an event loop: use it from a worker thread there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from django.core.mail.utils import DNS_NAME

from integrations.models import EmailIntegration, Encryption
from mailworker.mailboxes.base import MailboxAuthError, MailboxError
from mailworker.mailboxes.oauth import NeedsReconnect, access_token_for, expire_access_token
from mailworker.mailboxes.tls import describe_connection_error, ssl_context_for
from mailworker.transport.xoauth2 import xoauth2_base64

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Envelope:
    sender: str  # envelope MAIL FROM
    recipients: list[str]  # RCPT TO
    message: bytes  # the whole RFC 5322 message, CRLF line endings


@dataclass(frozen=True)
class SmtpProblem:
    """What went wrong, in words for an admin, and which field of the integration to fix.

    kind: connection, tls, auth, sender, recipient, timeout, protocol or message.
    field: the form field it concerns ("" when none does, e.g. a refused recipient).
    temporary: worth retrying later (refused connection, timeout, 4xx) or not (5xx, TLS, auth).
    """

    kind: str
    field: str
    message: str
    temporary: bool


@dataclass(frozen=True)
class Delivery:
    accepted: bool  # the server accepted the message for at least one recipient
    response: str  # the server's answer to DATA, e.g. "250 2.0.0 Ok: queued as X"
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> "550 5.1.1 ..."
    problem: SmtpProblem | None = None  # why it was not accepted (None when accepted)


class SmtpFailure(Exception):
    """The session could not be opened (connect, TLS, AUTH): nothing of the batch was sent."""

    def __init__(self, problem: SmtpProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def send_envelopes(
    integration: EmailIntegration,
    envelopes: Sequence[Envelope],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[Delivery]:
    """Send the envelopes over one SMTP session of the integration; one Delivery each, in order.

    Raises SmtpFailure only when the session cannot be established. Runs its own event loop:
    it cannot be called from inside a running one.
    """
    if not envelopes:
        return []
    with SmtpSender(integration, timeout=timeout) as sender:
        return sender.send(envelopes)


class SmtpSender:
    """Batches of envelopes over one SMTP session, kept open between batches so that the
    connection, TLS handshake and login are paid once, while the caller records what became
    of each batch before it sends the next. A batch that lost the connection makes the next
    one connect again. A context manager: the session ends (QUIT) when it exits."""

    def __init__(
        self, integration: EmailIntegration, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.integration = integration
        self.timeout = timeout
        self._runner = asyncio.Runner()
        self._session: _Session | None = None
        self._client: aiosmtplib.SMTP | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the session (QUIT) and the event loop."""
        try:
            if self._client is not None:
                self._runner.run(_quit(self._client))
                self._client = None
        finally:
            self._runner.close()

    def send(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """One Delivery per envelope, in order. Raises SmtpFailure when no session can be
        opened (nothing of the batch was sent)."""
        if not envelopes:
            return []
        if self._client is None or not self._runner.run(_still_answers(self._client)):
            self._connect()
        deliveries, closed_at = self._send_batch(list(envelopes))
        if closed_at is None:
            return deliveries
        # The server refused an email and ended the session (421: enough messages for one
        # connection, or going down): that email and the rest go over a new session, once.
        # A session kept over batches meets such a limit where a session per batch did not.
        try:
            self._connect()
        except SmtpFailure:
            return deliveries
        rest, _closed_again = self._send_batch(list(envelopes[closed_at:]))
        return deliveries[:closed_at] + rest

    def _send_batch(self, envelopes: list[Envelope]) -> tuple[list[Delivery], int | None]:
        assert self._session is not None and self._client is not None
        return self._runner.run(_send_batch(self._session, self._client, envelopes))

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
        self._client = self._runner.run(session.open())
        self._session = session


def uses_xoauth2(integration: EmailIntegration) -> bool:
    """An OAuth 2.0 integration sends with its token, unless an SMTP password was entered
    (a relay of its own)."""
    return integration.uses_oauth and not integration.smtp_password


def _access_token(integration: EmailIntegration) -> str:
    try:
        return access_token_for(integration)
    except NeedsReconnect as exc:
        raise SmtpFailure(
            SmtpProblem(kind="auth", field="", message=str(exc), temporary=False)
        ) from exc
    except MailboxError as exc:  # the token endpoint is down, or the settings are wrong
        temporary = not isinstance(exc, MailboxAuthError)
        raise SmtpFailure(
            SmtpProblem(kind="auth", field="", message=str(exc), temporary=temporary)
        ) from exc


class TokenRefused(SmtpFailure):
    """The server refused the OAuth 2.0 access token."""


# The session ------------------------------------------------------------------------------


class _Session:
    """Opens the connection the integration describes; every failure becomes SmtpFailure."""

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
            context = ssl_context_for(self.integration)
        except (ssl.SSLError, ValueError) as exc:
            raise SmtpFailure(
                SmtpProblem(
                    kind="tls",
                    field="ca_certificate",
                    message=f"The CA certificate of the integration cannot be used: {exc}.",
                    temporary=False,
                )
            ) from exc
        if self.encryption == Encryption.TLS12:
            # ssl_context_for() reads the incoming encryption; this is the outgoing one.
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _start_tls(self, client: aiosmtplib.SMTP, context: ssl.SSLContext | None) -> None:
        if not client.supports_extension("starttls"):
            raise SmtpFailure(
                SmtpProblem(
                    kind="tls",
                    field="smtp_encryption",
                    message=(
                        f"{self.where} does not offer STARTTLS, which the integration's "
                        "encryption requires: nothing was sent in clear text. Choose SSL/TLS "
                        "(usually port 465) if the server has it, or check the port."
                    ),
                    temporary=False,
                )
            )
        await self._run(client.starttls(tls_context=context), action="starting TLS (STARTTLS)")
        # The server's extensions (AUTH among them) must be asked again over TLS (RFC 3207).
        await self._run(client.ehlo(), action="greeting the server over TLS (EHLO)")

    async def _log_in(self, client: aiosmtplib.SMTP) -> None:
        username = self.integration.smtp_username
        if not client.supports_extension("auth"):
            clear = client.get_transport_info("sslcontext") is None
            raise SmtpFailure(
                SmtpProblem(
                    kind="auth",
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
            )
        try:
            await self._run(
                client.login(username, self.integration.smtp_password),
                action=f"logging in as {username}",
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise SmtpFailure(
                SmtpProblem(
                    kind="auth",
                    field="smtp_password",
                    message=(
                        f"Authentication failed: {self.where} refused the login of {username} "
                        f"({_answer(exc)}). Check the username and password."
                    ),
                    temporary=_is_temporary(exc.code),
                )
            ) from exc

    async def _log_in_xoauth2(self, client: aiosmtplib.SMTP, token: str) -> None:
        """AUTH XOAUTH2 with the initial response, as Microsoft and Google document it.
        aiosmtplib has no XOAUTH2, so the two commands are sent here."""
        username = self.integration.smtp_username or self.integration.oauth_mailbox
        if "xoauth2" not in client.server_auth_methods:
            raise SmtpFailure(
                SmtpProblem(
                    kind="auth",
                    field="smtp_host",
                    message=(
                        f"{self.where} does not offer OAuth 2.0 (AUTH XOAUTH2): use "
                        "smtp.office365.com (Microsoft 365) or smtp.gmail.com (Google), port "
                        "587 with STARTTLS."
                    ),
                    temporary=False,
                )
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
                SmtpProblem(
                    kind="auth",
                    field="",
                    message=(
                        f"Authentication failed: {self.where} refused the OAuth 2.0 token for "
                        f"{username} ({response.code} {response.message}). Check that the app "
                        "may send as this mailbox (SMTP AUTH enabled for it at Microsoft)."
                    ),
                    temporary=_is_temporary(response.code),
                )
            )

    async def _run(self, step, *, action: str):
        """Await one step of opening the session; turn what it raises into SmtpFailure."""
        try:
            return await step
        except (SmtpFailure, aiosmtplib.SMTPAuthenticationError):
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise SmtpFailure(
                SmtpProblem(
                    kind="protocol",
                    field="smtp_host",
                    message=f"{self.where} answered {_answer(exc)} while {action}.",
                    temporary=_is_temporary(exc.code),
                )
            ) from exc
        except (aiosmtplib.SMTPException, OSError, EOFError) as exc:
            raise SmtpFailure(self._connection_problem(exc, action=action)) from exc

    def _connection_problem(self, exc: BaseException, *, action: str) -> SmtpProblem:
        cause = _root_cause(exc)
        message = describe_connection_error(cause, host=self.host, port=self.port, action=action)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SmtpProblem(
                kind="tls",
                field="ca_certificate",
                message=(
                    f"The server certificate of {self.where} is not trusted "
                    f"({cause.verify_message}). Paste the CA certificate that signed it on the "
                    "integration, or turn off certificate verification (test servers only)."
                ),
                temporary=False,
            )
        if isinstance(cause, ssl.SSLError):
            return SmtpProblem(
                kind="tls", field="smtp_encryption", message=message, temporary=False
            )
        if isinstance(cause, TimeoutError):
            return SmtpProblem(kind="timeout", field="smtp_host", message=message, temporary=True)
        if isinstance(cause, ConnectionRefusedError):
            return SmtpProblem(
                kind="connection", field="smtp_port", message=message, temporary=True
            )
        if isinstance(cause, socket.gaierror):
            return SmtpProblem(
                kind="connection", field="smtp_host", message=message, temporary=True
            )
        if isinstance(cause, OSError | EOFError):
            return SmtpProblem(
                kind="connection", field="smtp_host", message=message, temporary=True
            )
        # aiosmtplib's own words: "Connection lost", "Timed out waiting for ...", ...
        text = getattr(cause, "message", None) or str(cause)
        return SmtpProblem(
            kind="connection",
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
        problem = SmtpProblem(
            kind="connection",
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
            SmtpProblem(
                kind="sender",
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
            problem=SmtpProblem(
                kind="recipient",
                field="",
                message=f"The server refused every recipient: {listed}.",
                temporary=all(_is_temporary(error.code) for error in exc.recipients),
            ),
        )
    except aiosmtplib.SMTPDataError as exc:
        return _not_sent(
            SmtpProblem(
                kind="message",
                field="",
                message=f"The server refused the email itself ({_answer(exc)}).",
                temporary=_is_temporary(exc.code),
            )
        )
    except aiosmtplib.SMTPNotSupported as exc:
        return _not_sent(
            SmtpProblem(kind="message", field="", message=f"{exc.message}.", temporary=False)
        )
    except ValueError as exc:
        # aiosmtplib checks every address before sending anything: a line break or a
        # malformed address never reaches the server.
        return _not_sent(
            SmtpProblem(
                kind="recipient",
                field="",
                message=f"An address cannot be sent to: {exc}.",
                temporary=False,
            )
        )
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == 421:  # the server is closing the connection
            raise aiosmtplib.SMTPServerDisconnected(_answer(exc)) from exc
        return _not_sent(
            SmtpProblem(
                kind="protocol",
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


def _not_sent(problem: SmtpProblem) -> Delivery:
    return Delivery(accepted=False, response="", refused={}, problem=problem)


def _lost(session: _Session, exc: BaseException) -> SmtpProblem:
    timed_out = isinstance(exc, TimeoutError)
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return SmtpProblem(
        kind="timeout" if timed_out else "connection",
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
