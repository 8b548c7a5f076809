"""The POP3 adapter: reads the mailbox oldest first; acked messages are deleted at QUIT.

POP3 deletes nothing until QUIT: `ack` marks messages with DELE and `close` commits them.
A session that ends without QUIT (a crash, a lost connection) deletes nothing, so every
message comes back on the next pass and its processed marker keeps it from being recorded
twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import poplib
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from integrations.models import EmailIntegration, Encryption
from mailworker.mailboxes.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    FetchedMessage,
    Mailbox,
    MailboxAuthError,
    MailboxError,
)
from mailworker.mailboxes.oauth import log_in_with_token
from mailworker.transport.errors import TransportErrorKind, kind_of_os_error
from mailworker.transport.tls import (
    describe_connection_error,
    ssl_context_for,
    uses_starttls,
    uses_tls,
)
from mailworker.transport.xoauth2 import xoauth2_base64

logger = logging.getLogger(__name__)

CRLF = b"\r\n"


class _FaithfulLines:
    """poplib refuses any line over 2048 bytes (its _MAXLINE) and drops a CR that starts a
    line. Mail has longer lines (HTML from some senders has no line breaks at all), and
    the raw bytes must reach the parser as the server sent them: read lines up to
    `max_line_bytes` and strip only the line ending."""

    max_line_bytes = 1024 * 1024

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(self.max_line_bytes + 1)
        if len(line) > self.max_line_bytes:
            raise poplib.error_proto(f"line longer than {self.max_line_bytes} bytes")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line.endswith(CRLF):
            return line[:-2], octets
        if line.endswith(b"\n"):
            return line[:-1], octets
        return line, octets


class _POP3(_FaithfulLines, poplib.POP3):
    pass


class _POP3_SSL(_FaithfulLines, poplib.POP3_SSL):
    pass


class Pop3Mailbox(Mailbox):
    def __init__(
        self,
        integration: EmailIntegration,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.integration = integration
        self.host = integration.effective_incoming_server
        self.port = integration.effective_incoming_port
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._connection: poplib.POP3 | None = None
        # UIDL -> message number, valid for this session only.
        self._numbers: dict[str, int] = {}
        self._deleted: set[int] = set()

    # Connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        try:
            with self._failures("loading the CA certificate"):
                context = ssl_context_for(self.integration) if uses_tls(self.integration) else None
            with self._failures("connecting"):
                if self.integration.incoming_encryption == Encryption.SSL:
                    self._connection = _POP3_SSL(
                        self.host, self.port, timeout=self.timeout, context=context
                    )
                else:
                    self._connection = _POP3(self.host, self.port, timeout=self.timeout)
            # A header line of an oversized message may be long; a whole message is never
            # read when it is above the limit.
            self._connection.max_line_bytes = max(
                _FaithfulLines.max_line_bytes, self.max_message_bytes + 2
            )
            if uses_starttls(self.integration):
                self._start_tls(self._connection, context)
            self._log_in(self._connection)
        except BaseException:
            self.close()
            raise

    def _start_tls(self, connection: poplib.POP3, context: ssl.SSLContext | None) -> None:
        with self._failures("asking for STLS"):
            try:
                offered = "STLS" in connection.capa()
            except poplib.error_proto:  # no CAPA command: no STLS either
                offered = False
        if not offered:
            raise MailboxError(
                f"{self.host}:{self.port} does not offer STARTTLS (STLS), which the "
                "integration's encryption requires: the password was not sent in clear text. "
                "Choose SSL/TLS (usually port 995) if the server has it.",
                kind=TransportErrorKind.TLS_HANDSHAKE,
            )
        with self._failures("starting TLS with STLS"):
            connection.stls(context)

    def _log_in(self, connection: poplib.POP3) -> None:
        if self.integration.uses_oauth:
            log_in_with_token(
                self.integration, lambda token: self._log_in_xoauth2(connection, token)
            )
            return
        username = self.integration.incoming_username
        with self._failures(f"logging in as {username}"):
            try:
                connection.user(username)
                connection.pass_(self.integration.incoming_password)
            except poplib.error_proto as exc:
                # Some servers refuse at USER already (unknown user, or no plain text login).
                raise MailboxAuthError(
                    f"{self.host}:{self.port} refused the login of {username}: {_server_text(exc)}"
                ) from exc

    def _log_in_xoauth2(self, connection: poplib.POP3, token: str) -> None:
        """SASL XOAUTH2 (RFC 5034 AUTH), which poplib does not offer: AUTH, the server's "+",
        then the base64 initial response, as Microsoft and Google document it."""
        username = self.integration.oauth_mailbox
        with self._failures(f"logging in as {username} with OAuth 2.0 (XOAUTH2)"):
            try:
                connection._shortcmd("AUTH XOAUTH2")
                answer = connection._shortcmd(xoauth2_base64(username, token))
                if answer.startswith(b"+ ") or answer == b"+":
                    # A failure comes as a challenge carrying the error (base64 JSON); the
                    # client answers with an empty line and the server then says -ERR.
                    connection._shortcmd("")
            except poplib.error_proto as exc:
                raise MailboxAuthError(
                    f"{self.host}:{self.port} refused the OAuth 2.0 token for {username}: "
                    f"{_server_text(exc)}. Check that POP is enabled for the mailbox and that "
                    "the app was granted POP access."
                ) from exc

    # Reading and removing ------------------------------------------------------------

    def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> Iterator[FetchedMessage]:
        connection = self._connected()
        if limit <= 0:
            return
        with self._failures("listing the messages"):
            ids = _numbered(connection.uidl()[1])
            sizes = {number: int(size) for number, size in _numbered(connection.list()[1]).items()}
        self._numbers = {uid: number for number, uid in ids.items()}
        for number in sorted(ids)[:limit]:
            if number in self._deleted or number not in sizes:
                continue
            size = sizes[number]
            oversized = size > self.max_message_bytes
            with self._failures(f"reading message {number}"):
                # TOP n 0: the header block and the blank line after it, nothing more.
                lines = connection.top(number, 0)[1] if oversized else connection.retr(number)[1]
            # poplib has already undone dot-stuffing and removed the terminating ".".
            raw = b"".join(line + CRLF for line in lines)
            original_path = ""
            if oversized:
                with self._failures(f"reading message {number} whole"):
                    original_path = _spool_retr(connection, number)
            yield FetchedMessage(
                uid=ids[number],
                raw=raw,
                size=size,
                oversized=oversized,
                original_path=original_path,
            )

    def count(self) -> int:
        """STAT: the number of messages in the maildrop, without listing them."""
        connection = self._connected()
        with self._failures("counting the messages"):
            return connection.stat()[0]

    def ack(self, uids: Sequence[str]) -> None:
        connection = self._connected()
        for uid in uids:
            number = self._numbers.get(uid)
            if number is None:
                logger.warning("Not acking %s: not listed in this POP3 session", uid)
                continue
            if number in self._deleted:
                continue
            with self._failures(f"deleting message {number}"):
                connection.dele(number)
            self._deleted.add(number)

    def close(self) -> None:
        """QUIT, which is when the server deletes what `ack` marked."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except Exception as exc:
            if self._deleted:
                logger.warning(
                    "QUIT to %s:%s failed (%s): the %d acked message(s) stay in the mailbox "
                    "and are recognised on the next pass",
                    self.host,
                    self.port,
                    exc,
                    len(self._deleted),
                )
            try:
                connection.close()
            except Exception:
                logger.debug("Closing %s:%s failed", self.host, self.port, exc_info=True)

    # Helpers -------------------------------------------------------------------------

    def _connected(self) -> poplib.POP3:
        if self._connection is None:
            raise MailboxError(f"Not connected to {self.host}:{self.port}: call connect() first.")
        return self._connection

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn what poplib, ssl and socket raise into a MailboxError that says where and
        while doing what."""
        try:
            yield
        except MailboxError:
            raise
        except poplib.error_proto as exc:
            raise MailboxError(
                f"{self.host}:{self.port} answered with an error while {action}: "
                f"{_server_text(exc)}"
            ) from exc
        except (OSError, EOFError) as exc:
            raise MailboxError(
                describe_connection_error(exc, host=self.host, port=self.port, action=action),
                kind=kind_of_os_error(exc),
            ) from exc


def _spool_retr(connection: poplib.POP3, number: int) -> str:
    """RETR an oversized message line by line into a temporary file (its path): memory holds
    one line. Dot-stuffing is undone as poplib does; the pipeline stores the file as the
    email's original and removes it."""
    handle, path = tempfile.mkstemp(prefix="sd-pop3-", suffix=".eml")
    try:
        with os.fdopen(handle, "wb") as target:
            connection._putcmd(f"RETR {number}")  # noqa: SLF001 - poplib has no streaming RETR
            connection._getresp()  # noqa: SLF001 - raises error_proto on -ERR
            while True:
                line, _octets = connection._getline()  # noqa: SLF001
                if line == b".":
                    break
                if line.startswith(b".."):
                    line = line[1:]
                target.write(line + CRLF)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _numbered(lines: list[bytes]) -> dict[int, str]:
    """`1 abc` lines of UIDL and LIST, by message number. UIDLs are printable ASCII by the
    RFC; latin-1 keeps any other byte rather than failing on it."""
    result = {}
    for line in lines:
        number, _, value = line.decode("latin-1").strip().partition(" ")
        result[int(number)] = value.strip()
    return result


def _server_text(exc: poplib.error_proto) -> str:
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)
