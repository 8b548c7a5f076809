"""The Celery app: configured from Django settings (CELERY_*), tasks found in the apps."""

import glob
import logging
import os
from pathlib import Path

from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import crontab
from celery.signals import (
    beat_init,
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_process_init,
)

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


@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(task: object = None, **_kwargs: object) -> None:
    """Around each task, database connections are kept or closed as for a web request: closed
    when unusable (an error, the server restarted) or older than CONN_MAX_AGE. Celery's own
    Django fixup would close them around every task (CELERY_DB_REUSE_MAX in settings.py says
    why not). Not for a task run eagerly: it runs inside its caller's transaction."""
    from django.db import close_old_connections

    request = getattr(task, "request", None)
    if not getattr(request, "is_eager", False):
        close_old_connections()


@worker_process_init.connect
def leave_the_worker_s_process_group(**_kwargs: object) -> None:
    """Each pool process in a process group of its own, so that a signal meant for the worker
    reaches only its main process. honcho (`make run`) stops a Procfile process by signalling
    its whole process group: the pool processes got SIGTERM directly and died mid-task
    ("ForkPoolWorker exited with signal 15") while the main process began its warm shutdown.
    Now only the main process hears it; it lets each pool process finish its task and exit.
    A pool process whose main process is gone exits at its next read (billiard's EOF), and
    billiard itself signals a pool process's group when it must stop one (time limits)."""
    os.setpgrp()


class PrivatePersistentScheduler(PersistentScheduler):
    """Beat's file-backed schedule (CELERY_BEAT_SCHEDULER), for the desk's own user only.

    dbm fixes the mode of its files from the umask when it opens them and sets it again on
    every write, so the umask must be narrowed before the schedule is opened; files an older
    version left open to others are narrowed too.
    """

    def setup_schedule(self) -> None:
        keep_new_files_private()
        schedule = Path(self.schedule_filename)
        for path in schedule.parent.glob(f"{glob.escape(schedule.name)}*"):
            if path.is_file():
                path.chmod(PRIVATE_FILE_MODE)
        super().setup_schedule()


@beat_init.connect
def dispatch_when_beat_starts(**_kwargs: object) -> None:
    """The first look for due mailboxes at once, not one POLL_DISPATCH_SECONDS after beat
    starts: at start-up every mailbox's first pass waited those seconds for it (the IDLE
    listener waits for those passes before it logs in; mailworker/idle.py)."""
    try:
        app.send_task("mailworker.tasks.dispatch_due_polls")  # routed as beat's own
    except Exception:  # the broker is not up yet: the schedule's first dispatch comes soon
        logging.getLogger(__name__).warning("could not dispatch at start", exc_info=True)


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
    sender.add_periodic_task(
        float(settings.GRAPH_SUBSCRIPTIONS_CHECK_SECONDS),
        sender.signature("mailworker.tasks.keep_graph_subscriptions"),
        name="keep Microsoft Graph subscriptions (push)",
    )
    sender.add_periodic_task(
        crontab(hour=3, minute=17),
        sender.signature("mailworker.tasks.delete_expired_originals"),
        name="delete originals and incoming log rows past the retention period (daily)",
    )
