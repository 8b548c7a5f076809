"""Celery tasks of the mail engine. Thin: each calls a service and returns."""

from __future__ import annotations

from celery import current_task, shared_task

from mailworker.outbound.outbox import send_due
from mailworker.scheduling import due_integration_ids, poll_integration_now
from mailworker.services import record_worker_heartbeat
from records.services import escalate_overdue_records


@shared_task(name="mailworker.tasks.record_heartbeat", ignore_result=True, acks_late=False)
def record_heartbeat() -> None:
    # acks_late off: a lost heartbeat is simply replaced by the next one.
    hostname = getattr(current_task.request, "hostname", None) or "unknown"
    record_worker_heartbeat(hostname=hostname)


@shared_task(name="mailworker.tasks.dispatch_due_polls", ignore_result=True, acks_late=False)
def dispatch_due_polls() -> int:
    """Beat runs this often; it queues a pass for each integration whose interval is up, so
    adding or changing an integration needs no restart of beat."""
    due = due_integration_ids()
    for integration_id in due:
        poll_integration.delay(integration_id)
    return len(due)


@shared_task(name="mailworker.tasks.poll_integration", ignore_result=True)
def poll_integration(integration_id: int) -> None:
    poll_integration_now(integration_id=integration_id)


@shared_task(name="mailworker.tasks.send_outbox", ignore_result=True)
def send_outbox() -> None:
    # acks_late (the default in settings): a worker that dies mid-send leaves the task to be
    # run again; rows already marked sent are not sent twice.
    send_due()


@shared_task(name="mailworker.tasks.escalate_overdue", ignore_result=True, acks_late=False)
def escalate_overdue() -> None:
    escalate_overdue_records()
