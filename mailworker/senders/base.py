"""One interface for every way the desk sends email, in the shape of Django's
`BaseEmailBackend`: open, close, send a batch of envelopes, and a context manager.

`send` answers with one `Delivery` per envelope, in order: what one message met (a refused
recipient, a refused message, a connection lost halfway) is that message's answer, so the
rest of the batch still goes and the outbox records an answer for every row. Only a
session that cannot be opened at all raises, a `TransportError`: nothing was sent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from mailworker.transport.errors import TransportError

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Envelope:
    sender: str  # the envelope sender (SMTP's MAIL FROM)
    recipients: list[str]  # the envelope recipients (RCPT TO)
    message: bytes  # the whole RFC 5322 message, CRLF line endings
    # The recipients no header names (an agent's Bcc): SMTP needs nothing more, a transport
    # that reads recipients from the headers (Graph) must be told them.
    bcc: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    accepted: bool  # the server accepted the message for at least one recipient
    response: str  # the server's answer, e.g. "250 2.0.0 Ok: queued as X"
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> "550 5.1.1 ..."
    error: TransportError | None = None  # why it was not accepted (None when accepted)

    @classmethod
    def failed(cls, error: TransportError) -> Delivery:
        return cls(accepted=False, response="", refused={}, error=error)


class Sender(ABC):
    """Sends through one integration. Keeps its session open across `send` calls until
    `close`, so that a caller that records each batch before sending the next pays the
    connection, TLS handshake and login once."""

    def __init__(self, integration: Any, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.integration = integration
        self.timeout = timeout

    def __enter__(self) -> Sender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def open(self) -> None:
        """Open the session now (send opens it when needed). Raises TransportError."""

    @abstractmethod
    def close(self) -> None:
        """End the session; never raises."""

    @abstractmethod
    def send(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """One Delivery per envelope, in order. Raises TransportError when no session can
        be opened (nothing of the batch was sent)."""
