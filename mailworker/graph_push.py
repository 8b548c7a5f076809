"""Push for Microsoft 365 (Graph) mailboxes: Graph change notifications start a pass.

When the desk has a public HTTPS address (PUBLIC_BASE_URL), each enabled Graph integration
holds a subscription to new messages in its folder (mailworker/graph_subscriptions.py).
Graph then POSTs to https://<PUBLIC_BASE_URL>/graph/notifications/ a moment after an email
arrives, and the view queues the integration's pass by task name: the email becomes a
record in seconds, not a poll interval later. The delta query of the pass still decides
what is read, so a lost or repeated notification costs nothing; polling stays as the safety
net. Without a public HTTPS address (Graph calls only https URLs it can reach),
integrations are polled only.

Every notification carries the clientState we gave at creation, in clear. Only its SHA-256
is stored, compared in constant time: a notification without the right one is refused.
This module imports no transport: the web process that answers Graph only reads the
subscription rows and queues tasks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.urls import reverse

from mailworker.models import GraphSubscription
from mailworker.scheduling import PUSH_QUEUE

logger = logging.getLogger(__name__)

POLL_TASK = "mailworker.tasks.poll_integration"
KEEP_TASK = "mailworker.tasks.keep_graph_subscription"
PUSH_DEBOUNCE_SECONDS = 2


# Where Graph calls us ----------------------------------------------------------------------


def notification_url() -> str:
    """https://<public address>/graph/notifications/, or "" when the desk has no public
    HTTPS address (Graph calls only HTTPS): then polling only."""
    base = settings.PUBLIC_BASE_URL.strip().rstrip("/")
    if not base.lower().startswith("https://"):
        return ""
    return base + reverse("graph_notifications")


# Notifications ------------------------------------------------------------------------------


@dataclass
class NotificationOutcome:
    accepted: int = 0
    refused: int = 0
    passes: set[int] = field(default_factory=set)


def handle_notifications(notifications: Iterable[Any]) -> NotificationOutcome:
    """Believe a notification only with the clientState of its subscription; queue one pass
    per integration whatever the number of notifications; answer lifecycle events."""
    outcome = NotificationOutcome()
    for notification in notifications:
        if not isinstance(notification, dict):
            outcome.refused += 1
            continue
        subscription = _subscription_for(notification)
        if subscription is None:
            outcome.refused += 1
            continue
        outcome.accepted += 1
        event = notification.get("lifecycleEvent")
        integration_id = subscription.integration_id
        if event == "reauthorizationRequired":
            queue_task(KEEP_TASK, integration_id, renew=True)
        elif event == "subscriptionRemoved":
            queue_task(KEEP_TASK, integration_id, recreate=True)
            outcome.passes.add(integration_id)
        else:  # a new message, or "missed": the delta query of a pass catches up
            outcome.passes.add(integration_id)
    for integration_id in outcome.passes:
        queue_pass(integration_id)
    return outcome


def queue_pass(integration_id: int) -> None:
    """A pass now, unless one was queued for the integration within PUSH_DEBOUNCE_SECONDS;
    then one more after the burst, so the last email of a burst is not left for the poll.
    Graph sends a notification per email: a hundred emails need two passes, not a hundred."""
    if cache.add(f"graph-push:{integration_id}", True, PUSH_DEBOUNCE_SECONDS):
        queue_task(POLL_TASK, integration_id, retry_if_busy=True, queue=PUSH_QUEUE)
    elif cache.add(f"graph-push-after:{integration_id}", True, PUSH_DEBOUNCE_SECONDS * 2):
        queue_task(
            POLL_TASK,
            integration_id,
            retry_if_busy=True,
            countdown=PUSH_DEBOUNCE_SECONDS,
            queue=PUSH_QUEUE,
        )


def _subscription_for(notification: dict[str, Any]) -> GraphSubscription | None:
    subscription_id = str(notification.get("subscriptionId") or "")
    client_state = str(notification.get("clientState") or "")
    subscription = GraphSubscription.objects.filter(subscription_id=subscription_id).first()
    # Compare even when there is no such subscription, so timing says nothing about ids.
    expected = subscription.client_state_sha256 if subscription else "0" * 64
    if not hmac.compare_digest(sha256_hex(client_state), expected) or subscription is None:
        logger.warning("Refused a Graph notification for subscription %r", subscription_id[:64])
        return None
    return subscription


def queue_task(
    task: str,
    integration_id: int,
    *,
    countdown: float = 0,
    queue: str | None = None,
    **kwargs: Any,
) -> None:
    """Start a task by name (the web process imports no task module); `queue`: PUSH_QUEUE for
    a pass for new mail, else the default queue."""
    signature = current_app.signature(task, args=(integration_id,), kwargs=kwargs)
    signature.apply_async(countdown=countdown or None, queue=queue)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
