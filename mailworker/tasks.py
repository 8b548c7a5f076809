"""Celery tasks of the mail engine. Thin: each calls a service and returns."""

from __future__ import annotations

from celery import Task, current_task, shared_task

from mailworker import graph_subscriptions
from mailworker.delivery import send_due
from mailworker.scheduling import due_integration_ids, poll_integration_now
from mailworker.services import record_worker_heartbeat
from mailworker.status import note_passes_queued
from records.originals import delete_expired
from records.services import escalate_overdue_records


@shared_task(name="mailworker.tasks.record_heartbeat", ignore_result=True, acks_late=False)
def record_heartbeat() -> None:
    # acks_late off: a lost heartbeat is simply replaced by the next one.
    hostname = getattr(current_task.request, "hostname", None) or "unknown"
    record_worker_heartbeat(hostname=hostname)


@shared_task(name="mailworker.tasks.dispatch_due_polls", ignore_result=True, acks_late=False)
def dispatch_due_polls() -> int:
    """Beat runs this often; it queues a pass for each integration whose interval is up and
    whose pass is not queued already, the most overdue first, so adding or changing an
    integration needs no restart of beat."""
    due = due_integration_ids()
    # Marked before they are queued: a pass that starts and ends at once clears its mark.
    note_passes_queued(due)
    for integration_id in due:
        poll_integration.delay(integration_id)
    return len(due)


# A pass asked for by the IDLE listener that finds another pass running tries again this
# many times, this many seconds apart: the running pass may have listed the mailbox just
# before the new email arrived. Polling remains the safety net after that.
BUSY_RETRIES = 5
BUSY_RETRY_SECONDS = 3


@shared_task(name="mailworker.tasks.poll_integration", ignore_result=True, bind=True)
def poll_integration(self: Task, integration_id: int, retry_if_busy: bool = False) -> None:
    """One pass over the integration's mailbox. Idempotent and acknowledged late: a worker
    killed mid-pass leaves the task to run again, and what was committed is only acked."""
    report = poll_integration_now(integration_id=integration_id)
    if report is not None and report.more:
        # Stopped at its budget: the rest comes after the passes queued meanwhile (marked
        # queued by the pass's end, see note_poll).
        poll_integration.delay(integration_id)
        return
    busy = report is not None and report.skipped
    if busy and retry_if_busy and self.request.retries < BUSY_RETRIES:
        raise self.retry(countdown=BUSY_RETRY_SECONDS, max_retries=BUSY_RETRIES)


@shared_task(name="mailworker.tasks.send_outbox", ignore_result=True)
def send_outbox() -> None:
    # acks_late (the default in settings): a worker that dies mid-send leaves the task to be
    # run again; rows already marked sent are not sent twice.
    send_due()


@shared_task(name="mailworker.tasks.escalate_overdue", ignore_result=True, acks_late=False)
def escalate_overdue() -> None:
    escalate_overdue_records()


@shared_task(name="mailworker.tasks.keep_graph_subscriptions", ignore_result=True, acks_late=False)
def keep_graph_subscriptions() -> int:
    """Beat: create, renew or drop the Graph change-notification subscriptions (push for
    Microsoft 365 (Graph) integrations when the desk has a public HTTPS address)."""
    return graph_subscriptions.keep_subscriptions()


@shared_task(name="mailworker.tasks.keep_graph_subscription", ignore_result=True)
def keep_graph_subscription(
    integration_id: int, renew: bool = False, recreate: bool = False
) -> None:
    """One integration's subscription: after a save, or when Graph asked (lifecycle)."""
    graph_subscriptions.keep_one(integration_id=integration_id, renew=renew, recreate=recreate)


@shared_task(name="mailworker.tasks.delete_expired_originals", ignore_result=True, acks_late=False)
def delete_expired_originals() -> dict[str, int]:
    """Beat, daily: originals (files and rows) and incoming email log rows older than the
    retention period of Settings > Desk settings (records/originals.py)."""
    return delete_expired()
