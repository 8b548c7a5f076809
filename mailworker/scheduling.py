"""When each integration's mailbox is read: its own interval, longer while it keeps failing.

Beat runs `dispatch_due_polls` every POLL_DISPATCH_SECONDS; it reads the integrations from the
database each time, so adding, changing or disabling one takes effect without a restart.
A failing integration backs off (the interval doubles with each failed pass in a row, up to
POLL_BACKOFF_MAX_SECONDS) and is back to its own interval after its first good pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import PassReport, run_pass
from mailworker.status import STATE_RELATIONS, state_of

# Failed passes in a row before the interval starts to grow: one failure may be a blip.
BACKOFF_AFTER_FAILURES = 2
# One query for every integration's schedule: its own fields, its state, its grant.
SCHEDULING_FIELDS = (
    "pk",
    "name",
    "created_at",
    "poll_interval_seconds",
    "incoming_protocol",
    "mailbox_state__last_polled_at",
    "mailbox_state__poll_failures",
    "oauth_grant__needs_reconnect_since",
)


def poll_interval(integration: EmailIntegration) -> timedelta:
    """The integration's interval, doubled for each failed pass in a row beyond the first."""
    base = integration.poll_interval_seconds
    extra_failures = state_of(integration).poll_failures - BACKOFF_AFTER_FAILURES + 1
    if extra_failures <= 0:
        return timedelta(seconds=base)
    ceiling = max(base, settings.POLL_BACKOFF_MAX_SECONDS)
    return timedelta(seconds=min(base * 2 ** min(extra_failures, 20), ceiling))


def next_poll_at(integration: EmailIntegration) -> datetime | None:
    """When the next pass is due; None means at once (never polled)."""
    last_polled_at = state_of(integration).last_polled_at
    if last_polled_at is None:
        return None
    return last_polled_at + poll_interval(integration)


def pollable_integrations() -> list[EmailIntegration]:
    pollable = []
    integrations = (
        EmailIntegration.objects.filter(incoming_enabled=True)
        .select_related(*STATE_RELATIONS)
        .only(*SCHEDULING_FIELDS)
    )
    for integration in integrations:
        if integration.needs_reconnect:
            continue  # the provider refused its sign-in: an admin must connect it again
        pollable.append(integration)
    return pollable


def due_integration_ids(now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    due = []
    for integration in pollable_integrations():
        due_at = next_poll_at(integration)
        if due_at is None or due_at <= now:
            due.append(integration.pk)
    return due


@dataclass(frozen=True)
class OverduePoll:
    integration: str
    overdue_seconds: float


def oldest_overdue_poll(now: datetime | None = None) -> OverduePoll | None:
    """The integration that has waited longest past its due time (for /healthz): when the
    workers or beat are stuck, this grows; a healthy desk keeps it near zero."""
    now = now or timezone.now()
    oldest: OverduePoll | None = None
    for integration in pollable_integrations():
        due_at = next_poll_at(integration) or integration.created_at
        overdue = (now - due_at).total_seconds()
        if overdue > 0 and (oldest is None or overdue > oldest.overdue_seconds):
            oldest = OverduePoll(integration.name, overdue)
    return oldest


def poll_integration_now(*, integration_id: int) -> PassReport | None:
    integration = (
        EmailIntegration.objects.select_related(*STATE_RELATIONS)
        .filter(pk=integration_id, incoming_enabled=True)
        .first()
    )
    if integration is None:
        return None
    return run_pass(integration=integration)
