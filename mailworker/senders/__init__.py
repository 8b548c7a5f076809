"""The one place that picks the sender for an integration's outgoing protocol: adding a
protocol is adding its module and a line here."""

from __future__ import annotations

from typing import Any

from integrations.models import OutgoingProtocol
from mailworker.senders.base import DEFAULT_TIMEOUT_SECONDS, Delivery, Envelope, Sender
from mailworker.senders.graph import GraphSender
from mailworker.senders.smtp import SmtpSender
from mailworker.transport.errors import TransportError, TransportErrorKind

SENDERS: dict[str, type[Sender]] = {
    OutgoingProtocol.SMTP: SmtpSender,
    OutgoingProtocol.MICROSOFT_GRAPH: GraphSender,
}

__all__ = ["Delivery", "Envelope", "Sender", "sender_for"]


def sender_for(integration: Any, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Sender:
    """The sender for the integration, not yet connected: use it as a context manager."""
    sender = SENDERS.get(integration.outgoing_protocol)
    if sender is None:
        raise TransportError(
            TransportErrorKind.CONFIGURATION,
            f"The outgoing protocol {integration.outgoing_protocol!r} is not supported.",
            field="outgoing_protocol",
        )
    return sender(integration, timeout=timeout)
