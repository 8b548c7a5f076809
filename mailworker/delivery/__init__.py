"""Delivery: drains the outbox through a `Sender` per integration (see drain.py); queueing
is mailworker.outbound.queue, which never imports this package."""

from mailworker.delivery.drain import SEND_CHUNK, claim_due, composed_bytes, send_due
from mailworker.delivery.results import SendReport

__all__ = ["SEND_CHUNK", "SendReport", "claim_due", "composed_bytes", "send_due"]
