"""One interface for every mailbox protocol: connect, fetch a bounded batch, ack, close.

The pipeline never knows whether it talks IMAP or POP3. An adapter is a context manager: it
connects and logs in on enter and closes on exit; `ack` is called only after the database
has committed what came from the acked messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from mailworker.transport.errors import TEMPORARY_KINDS, TransportError, TransportErrorKind

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class FetchedMessage:
    """One message as the server gave it.

    `uid` is stable across sessions (IMAP UID with UIDVALIDITY, POP3 UIDL). When the message
    is larger than the limit, `raw` holds only its header block and `oversized` is True, and
    `original_path` names a temporary file with the whole message.

    `identity`: for a server that makes the bytes anew on each fetch (Exchange keeps no MIME
    and writes it when asked, so a re-fetch may differ in a boundary or a date), a name of
    the message that the server keeps stable instead (Graph's immutable id). The processed
    marker is then keyed on it, so a message fetched again after a crash between commit and
    ack is still recognised. Empty: the bytes are the identity (IMAP, POP3 serve stored bytes).
    """

    uid: str
    raw: bytes
    size: int
    oversized: bool = False
    identity: str = ""
    # An oversized message: the whole of it, fetched a piece at a time into this temporary
    # file (the pipeline streams it to storage as the original, then removes it). "" when
    # the adapter could not (then only the header block is kept, and the quarantine says so).
    original_path: str = ""


class MailboxError(TransportError):
    """The mailbox cannot be read this pass (connection, TLS, protocol). The integration's
    pass fails; other integrations go on. A TransportError spelt message first, as the
    adapters raise it; when no field is given, the adapter fills it in from the kind."""

    default_kind = TransportErrorKind.PROTOCOL

    def __init__(
        self,
        message: str,
        *,
        kind: TransportErrorKind | None = None,
        field: str = "",
        temporary: bool | None = None,
    ) -> None:
        kind = kind or self.default_kind
        if temporary is None:
            temporary = kind in TEMPORARY_KINDS
        super().__init__(kind, message, field=field, temporary=temporary)


class MailboxAuthError(MailboxError):
    """The server refused the credentials: an admin must fix the integration."""

    default_kind = TransportErrorKind.AUTHENTICATION


# The form field of an integration that each kind of mailbox failure concerns.
INCOMING_FIELDS = {
    TransportErrorKind.CONNECTION_REFUSED: "incoming_port",
    TransportErrorKind.UNREACHABLE: "incoming_server",
    TransportErrorKind.TIMEOUT: "incoming_server",
    TransportErrorKind.TLS_HANDSHAKE: "incoming_encryption",
    TransportErrorKind.CERTIFICATE: "ca_certificate",
    TransportErrorKind.FOLDER_MISSING: "incoming_folder",
}


def incoming_field(kind: TransportErrorKind, integration: Any) -> str:
    """The field to fix for a mailbox failure of this kind ("" when no one field is)."""
    if kind in (TransportErrorKind.AUTHENTICATION, TransportErrorKind.NEEDS_RECONNECT):
        return "oauth_client_secret" if integration.uses_oauth else "incoming_password"
    return INCOMING_FIELDS.get(kind, "")


class Mailbox(ABC):
    integration: Any

    def __enter__(self) -> Mailbox:
        try:
            self.connect()
        except TransportError as exc:
            # Adapters and the token code say what failed; which field that is, is said here
            # once for every protocol.
            if not exc.field:
                exc.field = incoming_field(exc.kind, self.integration)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def connect(self) -> None:
        """Connect with the integration's encryption, verify the certificate, log in."""

    @abstractmethod
    def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> Iterator[FetchedMessage]:
        """Yield up to `limit` messages still in the mailbox, oldest first, without changing
        them (no \\Seen, no deletion)."""

    @abstractmethod
    def ack(self, uids: Sequence[str]) -> None:
        """Remove these messages from the mailbox (IMAP: \\Deleted + UID EXPUNGE; POP3: DELE,
        committed at QUIT by close())."""

    def count(self) -> int:
        """How many messages wait in the mailbox (the folder, for IMAP), without reading them.
        For the Test connection button; adapters that cannot tell cheaply need not say."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None:
        """Log out and close; never raises."""
