"""Celery tasks of the mail engine. Thin: each calls a service and returns."""

from __future__ import annotations

from celery import shared_task

from mailworker.services import record_worker_heartbeat


@shared_task(name="mailworker.tasks.record_heartbeat", ignore_result=True, acks_late=False)
def record_heartbeat() -> None:
    # acks_late off: a lost heartbeat is simply replaced by the next one.
    from celery import current_task

    hostname = getattr(current_task.request, "hostname", None) or "unknown"
    record_worker_heartbeat(hostname=hostname)
