"""The Celery app: configured from Django settings (CELERY_*), tasks found in the apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "servicedesk.settings")

app = Celery("servicedesk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def schedule_periodic_tasks(sender: Celery, **_kwargs: object) -> None:
    """Beat's fixed schedule; per-integration polling is added by the mail engine."""
    from django.conf import settings

    sender.add_periodic_task(
        float(settings.HEARTBEAT_INTERVAL_SECONDS),
        sender.signature("mailworker.tasks.record_heartbeat"),
        name="worker heartbeat",
    )
    sender.add_periodic_task(
        float(settings.POLL_DISPATCH_SECONDS),
        sender.signature("mailworker.tasks.dispatch_due_polls"),
        name="poll due mailboxes",
    )
    sender.add_periodic_task(
        float(settings.OUTBOX_SEND_SECONDS),
        sender.signature("mailworker.tasks.send_outbox"),
        name="send the outbox (retries)",
    )
    sender.add_periodic_task(
        60.0, sender.signature("mailworker.tasks.escalate_overdue"), name="escalate overdue records"
    )
