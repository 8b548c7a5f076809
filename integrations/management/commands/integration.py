"""`manage.py integration export [NAME] [--with-secrets]` and `manage.py integration import FILE`.

The JSON shape and the rules live in `integrations.serialization`; this only reads and writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.models import EmailIntegration
from integrations.serialization import (
    IntegrationFileError,
    export_integrations_json,
    import_integrations,
    parse_integrations_json,
)


class Command(BaseCommand):
    help = "Export email integrations as JSON, or create and update them from a JSON file."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand", required=True, metavar="{export,import}"
        )
        export = subcommands.add_parser(
            "export",
            help="Print integrations as a JSON list, without passwords unless --with-secrets.",
        )
        export.add_argument("name", nargs="?", help="Only the integration with this name.")
        export.add_argument(
            "--with-secrets",
            action="store_true",
            help="Include the mailbox and SMTP passwords and the OAuth client secret, in "
            "clear. OAuth tokens are never exported.",
        )
        import_ = subcommands.add_parser(
            "import",
            help="Create or update integrations by name from a JSON file; all or nothing.",
        )
        import_.add_argument("file", help='The JSON file, or "-" for standard input.')

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "export":
            self.export(name=options["name"], with_secrets=options["with_secrets"])
        else:
            self.import_file(options["file"])

    def export(self, *, name: str | None, with_secrets: bool) -> None:
        if name is not None and not EmailIntegration.objects.filter(name=name).exists():
            names = ", ".join(EmailIntegration.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"No integration named “{name}”. The integrations are: {names}.")
        self.stdout.write(export_integrations_json(name=name, with_secrets=with_secrets))
        if with_secrets:
            self.stderr.write("The export holds passwords in clear: keep the file safe.")

    def import_file(self, file: str) -> None:
        source = "standard input" if file == "-" else file
        try:
            # utf-8-sig: a file saved by a Windows editor may start with a byte order mark.
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {source}: {exc}") from exc
        try:
            results = import_integrations(entries=parse_integrations_json(text))
        except IntegrationFileError as exc:
            raise CommandError(
                f"Nothing was imported from {source}; fix these and run the import again:\n"
                + "\n".join(exc.problems)
            ) from exc
        for result in results:
            self.stdout.write(f"{'created' if result.created else 'updated'} {result.name}")
