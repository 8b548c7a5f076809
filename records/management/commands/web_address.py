"""Print where a browser on this machine finds the desk (from WEB_BIND), for `make run`'s
banner: the address gunicorn really listens on, read as the settings read it (.env too)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from servicedesk.configuration import web_url


class Command(BaseCommand):
    help = "Print the desk's web address (from WEB_BIND)."
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(web_url(settings.WEB_BIND))
