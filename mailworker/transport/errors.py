"""One error vocabulary for every transport, inbound and outbound.

A mailbox that cannot be read and a sender that cannot send say the same things the same
way: what kind of failure it is, in words for an admin, which field of the integration form
to fix, and whether trying again later may help. The Test buttons and the outbox read these,
never a protocol library's exceptions.
"""

from __future__ import annotations

import enum
import socket
import ssl


class TransportErrorKind(enum.Enum):
    CONNECTION_REFUSED = "connection refused"
    UNREACHABLE = "unreachable"  # no route, the name does not resolve, reset
    CONNECTION_LOST = "connection lost"
    TIMEOUT = "timeout"
    TLS_HANDSHAKE = "TLS handshake"  # also: STARTTLS not offered
    CERTIFICATE = "certificate"  # the server's certificate is not trusted, or ours unusable
    AUTHENTICATION = "authentication"
    NEEDS_RECONNECT = "needs reconnect"  # the OAuth grant is gone: an admin connects again
    FOLDER_MISSING = "folder missing"
    PERMISSION = "permission"  # logged in, but not allowed (e.g. Microsoft Graph's 403)
    SENDER_REFUSED = "sender refused"
    RECIPIENT_REFUSED = "recipient refused"
    MESSAGE_REFUSED = "message refused"
    THROTTLED = "throttled"
    PROTOCOL = "protocol"  # the server answered something else than expected
    CONFIGURATION = "configuration"  # the integration's settings cannot work as they are


class TransportError(Exception):
    """A transport failed. `field`: the integration form field it concerns ("" when none
    does). `temporary`: trying again later may succeed without anyone changing anything."""

    def __init__(
        self,
        kind: TransportErrorKind,
        message: str,
        *,
        field: str = "",
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field
        self.temporary = temporary

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.name}, {self.message!r}, field={self.field!r})"


def kind_of_os_error(exc: BaseException) -> TransportErrorKind:
    """The kind of a failure the operating system or the TLS layer reported."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportErrorKind.CERTIFICATE
    if isinstance(exc, ssl.SSLError):
        return TransportErrorKind.TLS_HANDSHAKE
    if isinstance(exc, TimeoutError):
        return TransportErrorKind.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return TransportErrorKind.CONNECTION_REFUSED
    if isinstance(exc, socket.gaierror):
        return TransportErrorKind.UNREACHABLE
    if isinstance(exc, ConnectionError | EOFError):
        return TransportErrorKind.CONNECTION_LOST
    return TransportErrorKind.UNREACHABLE


# Kinds that trying again later may cure without anyone changing a setting.
TEMPORARY_KINDS = frozenset(
    {
        TransportErrorKind.CONNECTION_REFUSED,
        TransportErrorKind.UNREACHABLE,
        TransportErrorKind.CONNECTION_LOST,
        TransportErrorKind.TIMEOUT,
        TransportErrorKind.THROTTLED,
        TransportErrorKind.PROTOCOL,
    }
)
