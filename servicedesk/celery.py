"""The Celery app: configured from Django settings (CELERY_*), tasks found in the apps."""

import os
from pathlib import Path

from celery import Celery
from celery.signals import beat_init, celeryd_init

from servicedesk.configuration import PRIVATE_FILE_MODE, keep_new_files_private

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "servicedesk.settings")

app = Celery("servicedesk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@celeryd_init.connect
def keep_worker_files_private(**_kwargs: object) -> None:
    """The worker writes broker messages and the SQLite database: for the desk's own user
    only. (Not at import: the test suite imports this module too.)"""
    keep_new_files_private()


@beat_init.connect
def keep_beat_files_private(sender: object = None, **_kwargs: object) -> None:
    """Beat opens its schedule file just before this signal: narrow it (and the files dbm
    makes beside it) to 0600, and keep what beat writes later private."""
    keep_new_files_private()
    schedule = Path(str(getattr(sender, "schedule_filename", "") or ""))
    if schedule.name:
        for path in schedule.parent.glob(f"{schedule.name}*"):
            if path.is_file():
                path.chmod(PRIVATE_FILE_MODE)


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
