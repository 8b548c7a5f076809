"""One suite: the rows on one database, in a process configured for it.

`python -m bench.suite --backend sqlite --out rows.json` is started by `python -m bench`
with DATABASE_URL, DATA_DIR and MEDIA_ROOT already pointing at the backend's own database.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PASS_SECONDS = re.compile(r"\((\d+(?:\.\d+)?) s\)")


@dataclass
class FetchmailRun:
    wall_seconds: float  # the command, Python and Django start included
    pass_seconds: float  # the pass as fetchmail reports it: connect to empty mailbox
    peak_rss_bytes: int  # of the fetchmail process (wait4's ru_maxrss)
    output: str
    # CPU seconds (user + system) of the command and the processes it reaped (the parse-ahead
    # process): unlike wall time, hardly moved by other load on a shared machine.
    cpu_seconds: float = 0.0


@dataclass
class Bench:
    backend: str
    primary: bool  # the first suite also runs the rows that do not depend on the database
    options: argparse.Namespace
    dovecot: Any = None
    smtp: Any = None
    _names: int = 0
    cleanup: list[Any] = field(default_factory=list)

    def integration(self, *, sending: bool = True, **overrides: Any) -> Any:
        """An integration reading a new Dovecot account and, with `sending`, sending through
        the bench's aiosmtpd (so notifications are composed as in production)."""
        from integrations.models import EmailIntegration
        from integrations.services import Secrets, save_integration
        from tests.dovecot import new_account
        from tests.smtpd import USERNAME

        username, password = new_account(self.dovecot)
        self._names += 1
        fields: dict[str, Any] = {
            "name": f"Bench {self._names}",
            "incoming_enabled": True,
            "incoming_protocol": "imap",
            "incoming_server": self.dovecot.host,
            "incoming_port": self.dovecot.imaps_port,
            "incoming_encryption": "ssl",
            "incoming_username": username,
            # Both servers' self-signed certificates: one PEM may hold several CAs.
            "ca_certificate": self.dovecot.ca_pem + self.smtp.ca_pem,
            "verify_certificates": True,
        }
        if sending:
            fields |= {
                "outgoing_enabled": True,
                "email_address": USERNAME,
                "smtp_host": self.smtp.host,
                "smtp_port": self.smtp.port_for("tls"),
                "smtp_encryption": "tls",
                "smtp_username": USERNAME,
            }
        fields |= overrides
        return save_integration(
            integration=EmailIntegration(**fields),
            secrets=Secrets(
                incoming_password=password, smtp_password=self.smtp.password if sending else None
            ),
        )

    def fetchmail(self, integration: Any, *, env: dict[str, str] | None = None) -> FetchmailRun:
        """`manage.py fetchmail` for one integration, as ops run it, in its own process."""
        command = [sys.executable, "manage.py", "fetchmail", "--integration", integration.name]
        if self.options.profile:
            results = PROJECT_ROOT / "bench" / "results"
            report = results / f"profile-{self.backend}-{self._names}.txt"
            report.parent.mkdir(parents=True, exist_ok=True)
            command[1:1] = ["-m", "pyinstrument", "--renderer", "text", "-o", str(report)]
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        output = process.stdout.read().decode("utf-8", "replace")
        # wait4 gives this child's own peak RSS (Linux reports ru_maxrss in KiB).
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        if process.returncode != 0:
            raise RuntimeError(f"fetchmail failed ({process.returncode}):\n{output[-4000:]}")
        found = PASS_SECONDS.search(output)
        return FetchmailRun(
            wall_seconds=wall,
            pass_seconds=float(found.group(1)) if found else wall,
            peak_rss_bytes=usage.ru_maxrss * 1024,
            output=output,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )


def _start_servers(bench: Bench) -> None:
    from tests.dovecot import start_dovecot
    from tests.smtpd import start_smtp_server

    options = bench.options
    connections = 0
    if "many-mailboxes" in options.rows:
        connections = options.mailboxes
    if "big-mailbox" in options.rows:
        connections = max(connections, options.small_mailboxes + 1)
    bench.dovecot = start_dovecot(connections=connections)
    bench.smtp = start_smtp_server()


def _stop_servers(bench: Bench) -> None:
    import shutil

    if bench.smtp is not None:
        bench.smtp.shutdown()
        shutil.rmtree(bench.smtp.directory, ignore_errors=True)
    if bench.dovecot is not None:
        bench.dovecot.stop()
        shutil.rmtree(bench.dovecot.directory, ignore_errors=True)


def run_suite(options: argparse.Namespace) -> list[dict[str, Any]]:
    django.setup()
    from django.core.management import call_command

    from bench.rows import OPT_IN, all_rows

    call_command("migrate", verbosity=0, interactive=False)
    bench = Bench(backend=options.backend, primary=options.primary, options=options)
    results: list[dict[str, Any]] = []
    try:
        _start_servers(bench)
        for key, function in all_rows():
            if (options.rows or key in OPT_IN) and key not in options.rows:
                continue
            print(f"[{bench.backend}] {key} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            for row in function(bench):
                results.append({"backend": bench.backend, "key": key, **row.as_dict()})
            took = time.monotonic() - started
            print(f"[{bench.backend}] {key} done in {took:.0f} s", file=sys.stderr, flush=True)
    finally:
        _stop_servers(bench)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--primary", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="*", default=[])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--memory-emails", default="50,200")
    parser.add_argument("--memory-mb", type=int, default=20)
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="pyinstrument the fetchmail run")
    # The many-mailboxes and big-mailbox rows (opt-in: name them in --rows).
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--mailbox-emails", type=int, default=5)
    parser.add_argument("--poll-interval", type=int, default=60)
    parser.add_argument("--big-emails", type=int, default=20_000)
    parser.add_argument("--small-mailboxes", type=int, default=200)
    options = parser.parse_args()
    results = run_suite(options)
    Path(options.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
