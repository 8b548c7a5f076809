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

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class FetchedMessage:
    """One message as the server gave it.

    `uid` is stable across sessions (IMAP UID with UIDVALIDITY, POP3 UIDL). When the message
    is larger than the limit, `raw` holds only its header block and `oversized` is True.
    """

    uid: str
    raw: bytes
    size: int
    oversized: bool = False


class MailboxError(Exception):
    """The mailbox cannot be read this pass (connection, TLS, protocol). The integration's
    pass fails; other integrations go on."""


class MailboxAuthError(MailboxError):
    """The server refused the credentials: an admin must fix the integration."""


class Mailbox(ABC):
    def __enter__(self) -> Mailbox:
        self.connect()
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
