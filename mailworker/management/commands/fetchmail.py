"""`manage.py fetchmail [--integration NAME]`: one pass over every enabled incoming
integration (or one), a line per integration; exits non-zero when any failed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import run_pass


class Command(BaseCommand):
    help = "Import the emails waiting in the incoming integrations' mailboxes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--integration", help="Only the integration with this name.")
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, integration: str | None, batch_size: int, **options: Any) -> None:
        integrations = EmailIntegration.objects.filter(incoming_enabled=True)
        if integration:
            integrations = integrations.filter(name=integration)
            if not integrations.exists():
                raise CommandError(f"No enabled incoming integration named “{integration}”.")
        failed = []
        for each in integrations.order_by("name"):
            report = run_pass(integration=each, batch_size=batch_size)
            self.stdout.write(report.summary())
            if report.failed:
                failed.append(each.name)
        if failed:
            raise CommandError(f"{len(failed)} integration(s) failed: {', '.join(failed)}")
