"""`manage.py ingest_email --integration NAME [PATH ...]`: run the inbound pipeline on raw
emails from .eml files, directories of them, mbox files, or standard input (so a mail
server can pipe into it).

Exit codes follow sysexits, as mail servers expect from a delivery command: 0 when every
email was handled (a quarantined email is handled: it is kept), 75 (EX_TEMPFAIL) when the
database is unreachable or the integration does not exist, so the mail server keeps the
email and retries instead of bouncing it.
"""

from __future__ import annotations

import mailbox
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import InterfaceError, OperationalError, connection

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.pipeline.process import process_raw

EX_TEMPFAIL = 75
EX_NOINPUT = 66


def is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def raw_emails(path: Path) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) for every email under a path."""
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not child.name.startswith("."):
                yield from raw_emails(child)
    elif is_mbox(path):
        box = mailbox.mbox(path, create=False)
        try:
            for index, key in enumerate(box.iterkeys()):
                yield f"{path}#{index + 1}", box.get_bytes(key)
        finally:
            box.close()
    else:
        yield str(path), path.read_bytes()


class Command(BaseCommand):
    help = "Import raw emails (.eml files, directories, mbox files, or standard input)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--integration", required=True, help="The integration's name.")
        parser.add_argument("paths", nargs="*", help="Files or directories; none or - : stdin.")

    def handle(self, *args: Any, integration: str, paths: list[str], **options: Any) -> None:
        try:
            connection.ensure_connection()
            target = EmailIntegration.objects.filter(name=integration).first()
        except (OperationalError, InterfaceError) as exc:
            self.stderr.write(f"The database is unreachable ({exc}); try again later.")
            sys.exit(EX_TEMPFAIL)
        if target is None:
            self.stderr.write(f"No integration named “{integration}”; the email was not taken.")
            sys.exit(EX_TEMPFAIL)
        missing = [path for path in paths if path != "-" and not Path(path).exists()]
        if missing:
            self.stderr.write(f"No such file or directory: {', '.join(missing)}")
            sys.exit(EX_NOINPUT)
        counts: Counter[str] = Counter()
        desk_addresses = frozenset(addresses_read_by_incoming_integrations())
        try:
            for label, raw in self.sources(paths):
                result = process_raw(integration=target, raw=raw, desk_addresses=desk_addresses)
                counts[result.outcome] += 1
                if options["verbosity"] > 1:
                    reason = result.reason.strip().splitlines()[0] if result.reason.strip() else ""
                    self.stdout.write(f"{label}: {result.outcome} {reason}".rstrip())
        except (OperationalError, InterfaceError) as exc:
            self.stderr.write(f"The database became unreachable ({exc}); try again later.")
            sys.exit(EX_TEMPFAIL)
        summary = ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items()))
        self.stdout.write(f"{target.name}: {sum(counts.values())} emails: {summary or 'none'}")

    def sources(self, paths: list[str]) -> Iterator[tuple[str, bytes]]:
        if not paths or paths == ["-"]:
            yield "stdin", sys.stdin.buffer.read()
            return
        for path in paths:
            if path == "-":
                yield "stdin", sys.stdin.buffer.read()
            else:
                yield from raw_emails(Path(path))
