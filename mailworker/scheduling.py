"""When each integration's mailbox is read: its own interval, longer while it keeps failing.

Beat runs `dispatch_due_polls` every POLL_DISPATCH_SECONDS; it reads the integrations from the
database each time, so adding, changing or disabling one takes effect without a restart.
A failing integration backs off (the interval doubles with each failed pass in a row, up to
POLL_BACKOFF_MAX_SECONDS) and is back to its own interval after its first good pass.

Many mailboxes on one machine (issue 15):
- Each mailbox is polled at its own phase of its interval (`next_poll_at`), so mailboxes
  imported in one wave (the first start, a restart) do not all fall due together again.
- A mailbox whose routine pass is queued or running is not queued again
  (MailboxState.pass_queued_at, until the pass ends or POLL_QUEUED_STALE_SECONDS pass).
- Dispatch queues the most overdue first.
- A pass takes at most PASS_MAX_EMAILS emails or PASS_MAX_SECONDS, then its continuation
  queues behind the others (tasks.poll_integration).
- Passes for new mail (IMAP IDLE, Graph push) go to a queue of their own, taken first
  (PUSH_QUEUE, CELERY_TASK_QUEUES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import PassBudget, PassReport, run_pass
from mailworker.status import STATE_RELATIONS, state_of

# The queue of passes for new mail (IMAP IDLE, Graph push): workers take it first.
PUSH_QUEUE = "mail-push"
# The golden ratio's fraction: consecutive integration ids get phases far apart.
_PHASE_STEP = (math.sqrt(5) - 1) / 2
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
    "mailbox_state__pass_queued_at",
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


def poll_phase(integration_id: int, interval: float) -> float:
    """Where in each interval this mailbox is polled, in seconds: spread evenly by id."""
    return (integration_id * _PHASE_STEP) % 1.0 * interval


def next_poll_at(integration: EmailIntegration) -> datetime | None:
    """When the next pass is due; None means at once (never polled).

    The first moment, at least half an interval after the last pass, that falls on the
    mailbox's own phase of its interval: once settled, one pass per interval, and mailboxes
    whose passes ended together (a first import of a thousand) are due at times spread
    across the interval instead of together.
    """
    last_polled_at = state_of(integration).last_polled_at
    if last_polled_at is None:
        return None
    interval = poll_interval(integration).total_seconds()
    phase = poll_phase(integration.pk, interval)
    earliest = last_polled_at.timestamp() + interval / 2
    slot = math.ceil((earliest - phase) / interval) * interval + phase
    return datetime.fromtimestamp(slot, tz=UTC)


def pass_queued(integration: EmailIntegration, now: datetime) -> bool:
    """A routine pass of it is queued or running (and not lost long ago)."""
    queued_at = state_of(integration).pass_queued_at
    stale = timedelta(seconds=settings.POLL_QUEUED_STALE_SECONDS)
    return queued_at is not None and now - queued_at < stale


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
    """The integrations whose pass is due and not queued yet, the most overdue first."""
    now = now or timezone.now()
    due: list[tuple[datetime, int]] = []
    for integration in pollable_integrations():
        due_at = next_poll_at(integration)
        if due_at is None:
            due_at = integration.created_at
        elif due_at > now:
            continue
        if not pass_queued(integration, now):
            due.append((due_at, integration.pk))
    return [integration_id for _due_at, integration_id in sorted(due)]


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
    """One bounded pass (PASS_MAX_EMAILS, PASS_MAX_SECONDS); the report's `more` says that
    emails were left for its continuation."""
    integration = (
        EmailIntegration.objects.select_related(*STATE_RELATIONS)
        .filter(pk=integration_id, incoming_enabled=True)
        .first()
    )
    if integration is None:
        return None
    return run_pass(
        integration=integration,
        budget=PassBudget(
            max_emails=settings.PASS_MAX_EMAILS, max_seconds=settings.PASS_MAX_SECONDS
        ),
    )
