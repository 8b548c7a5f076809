"""`manage.py mailidle`: keep IMAP IDLE connections open and queue a pass on new mail.

Runs beside the Celery worker (its own container in docker-compose.yml; a process of its own
under `make run`). One process watches every IMAP integration that uses push delivery.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mailworker.idle import IdleListener, idle_integrations, raise_open_file_limit


class Command(BaseCommand):
    help = "Listen for new mail with IMAP IDLE and queue a pass as soon as it arrives."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--connect-threads",
            type=int,
            default=4,
            help="Threads that open connections (waiting happens in one thread).",
        )

    def handle(self, *args: Any, connect_threads: int, **options: Any) -> None:
        listener = IdleListener(connect_threads=connect_threads)

        def stop(_signum: int, _frame: FrameType | None) -> None:
            listener.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"mailidle: {raise_open_file_limit(len(idle_integrations()))}")
        self.stdout.write("mailidle: listening for new mail (IMAP IDLE); Ctrl-C stops.")
        self.stdout.flush()
        listener.run()
        self.stdout.write("mailidle: stopped.")
