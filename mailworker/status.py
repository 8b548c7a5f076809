"""What the mail engine knows of each mailbox: polls, failures in a row and their back-off,
the IDLE listener, and one alert to admins when an integration keeps failing.

The state is a MailboxState row per integration, created by its first write; readers get an
unsaved, empty one for an integration never polled. Every write is one UPDATE of the row
(`_write`), never a save() of a copy read earlier: a pass, the IDLE listener and a send may
write the same row at once.

Admins hear about a failing integration once per streak of failures, not once per poll, and
the streak ends by itself with the next success. Layers below (mailboxes, senders, outbound)
never import this module: they raise, and the pass or the delivery that called them notes it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.alerts import queue_alert
from mailworker.models import MailboxState

# select_related() these with the integration to read its state and "needs reconnect"
# without a query of their own.
STATE_RELATIONS = ("mailbox_state", "oauth_grant")


# Reading ------------------------------------------------------------------------------------


def state_of(integration: EmailIntegration) -> MailboxState:
    """The integration's state (from select_related when the caller used STATE_RELATIONS);
    an unsaved, empty one when nothing was recorded yet."""
    try:
        return integration.mailbox_state
    except MailboxState.DoesNotExist:
        return MailboxState(integration=integration)


def states_by_integration(integration_ids: list[int]) -> dict[int, MailboxState]:
    """The states of many integrations in one query, keyed by integration id (the
    integrations list)."""
    states = MailboxState.objects.filter(integration_id__in=integration_ids)
    return {state.integration_id: state for state in states}


def failing_integrations(*, limit: int = 3) -> list[tuple[int, str]]:
    """(pk, name) of up to `limit` integrations that keep failing (as many failures in a
    row as alert admins, alerted or not) or must be connected again: the admins' banner.
    One query."""
    failing = EmailIntegration.objects.filter(
        Q(mailbox_state__consecutive_failures__gte=settings.INTEGRATION_FAILURES_BEFORE_ALERT)
        | Q(mailbox_state__failure_alert_sent_at__isnull=False)
        | Q(oauth_grant__needs_reconnect_since__isnull=False)
    )
    return list(failing.order_by("name").values_list("pk", "name")[:limit])


# Writing ------------------------------------------------------------------------------------


def _write(integration_id: int, **values: Any) -> None:
    """One UPDATE of the integration's state row; the row is created first only when the
    integration has none yet."""
    if MailboxState.objects.filter(integration_id=integration_id).update(**values):
        return
    try:
        with transaction.atomic():
            MailboxState.objects.create(integration_id=integration_id)
    except IntegrityError:
        pass  # another worker created it meanwhile
    MailboxState.objects.filter(integration_id=integration_id).update(**values)


def note_poll(*, integration: EmailIntegration, error: str | None, continues: bool = False) -> None:
    """A pass over the mailbox ended, failed with `error` or not (None). `continues`: it
    stopped at its budget and its continuation is being queued, so it counts as queued.
    A good pass also ends the streak of failures (note_success), in the same UPDATE: at a
    thousand mailboxes each pass's writes count."""
    now = timezone.now()
    values: dict[str, Any] = {"last_polled_at": now, "pass_queued_at": now if continues else None}
    if error is not None:
        values |= {
            "last_error": error,
            "last_error_at": now,
            "poll_failures": F("poll_failures") + 1,
        }
    else:
        values |= {"last_success_at": now, "last_error": "", "poll_failures": 0}
        values |= SUCCESS
    _write(integration.pk, **values)


def note_passes_queued(integration_ids: list[int]) -> None:
    """Routine passes of these integrations were queued (dispatch_due_polls)."""
    if not integration_ids:
        return
    now = timezone.now()
    with_state = set(
        MailboxState.objects.filter(integration_id__in=integration_ids).values_list(
            "integration_id", flat=True
        )
    )
    MailboxState.objects.bulk_create(
        [
            MailboxState(integration_id=integration_id)
            for integration_id in integration_ids
            if integration_id not in with_state
        ],
        ignore_conflicts=True,  # another worker created it meanwhile
    )
    MailboxState.objects.filter(integration_id__in=integration_ids).update(pass_queued_at=now)


def note_idle_status(*, integration_id: int, status: str) -> None:
    _write(integration_id, idle_status=status[:255], idle_status_at=timezone.now())


def note_subject_regex_timeout(*, integration_id: int) -> None:
    """The ignore-subject pattern took too long on a subject: its form shows a warning."""
    _write(integration_id, subject_regex_timed_out_at=timezone.now())


def note_reconnected(*, integration_id: int) -> None:
    """A new sign-in starts a new streak: its failures alert admins again."""
    _write(
        integration_id,
        last_error="",
        last_error_at=None,
        consecutive_failures=0,
        failure_alert_sent_at=None,
    )


def note_alert_sent(*, integration_id: int) -> None:
    """An alert of the current streak went out by another way (needs reconnect): the passes
    that fail until an admin acts do not send a second, vaguer one."""
    _write(integration_id, failure_alert_sent_at=timezone.now())


# What a success writes: the streak of failures is over, its alert may go out again.
SUCCESS: dict[str, Any] = {"consecutive_failures": 0, "failure_alert_sent_at": None}


def note_success(*, integration: EmailIntegration) -> None:
    _write(integration.pk, **SUCCESS)


def note_failure(*, integration: EmailIntegration, direction: str, error: str) -> bool:
    """Count a failure; alert admins once when the streak reaches the threshold. Returns
    whether an alert was queued. An alert nobody could receive (no admin has an email
    address) is not counted as sent: the next failure tries again, and reaches the first
    admin who has added an address meanwhile."""
    with transaction.atomic():
        _write(integration.pk, consecutive_failures=F("consecutive_failures") + 1)
        current = MailboxState.objects.select_for_update().get(integration_id=integration.pk)
        if (
            current.consecutive_failures < settings.INTEGRATION_FAILURES_BEFORE_ALERT
            or current.failure_alert_sent_at is not None
        ):
            return False
        context = {
            "integration": {"name": integration.name},
            "consecutive_failures": current.consecutive_failures,
            "direction": direction,
            "error": error,
        }
        if not queue_alert(template="integration_failing", context=context):
            return False
        current.failure_alert_sent_at = timezone.now()
        current.save(update_fields=["failure_alert_sent_at"])
    return True
