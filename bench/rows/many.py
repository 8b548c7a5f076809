"""Rows for many mailboxes (issue 15), in the production shape: `celery worker
--concurrency=2` (prefork, as the Procfile runs it), `celery beat` and `manage.py mailidle`,
push on for every mailbox, on the suite's database and on Redis when REDIS_URL is set.

- many-mailboxes: M mailboxes of a few emails each. How long until every first pass is done,
  how many IDLE connections the one mailidle holds, the new-mail latency of emails delivered
  one by one into random mailboxes (and right after beat's dispatch queued a wave of routine
  re-polls), and the memory of the worker and of mailidle.
- big-mailbox: one mailbox of many thousand emails beside many small ones: the small ones'
  new-mail latency while the big one drains, and its drain rate.

Opt-in (`--rows many-mailboxes big-mailbox`): at full scale each takes minutes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.rows import Row
from bench.rows.idle import _start, _wait

FIRST_PASSES_TARGET_SECONDS = 60.0  # one poll interval
MEDIAN_TARGET_SECONDS = 1.5
WORST_TARGET_SECONDS = 5.0
NEW_EMAILS = 20
# Right after a dispatch: emails delivered one by one, this many after each of a few waves.
EMAILS_PER_WAVE = 4
RECORD_TIMEOUT_SECONDS = 60.0
DISPATCH_SENT = re.compile(rb"Sending due task [^\n]*\(mailworker\.tasks\.dispatch_due_polls\)")
DISPATCH_DONE = re.compile(
    rb"Task mailworker\.tasks\.dispatch_due_polls\[[^\]]+\] succeeded in ([\d.]+)s: (\d+)"
)
PASS_DONE = re.compile(rb"Task mailworker\.tasks\.poll_integration\[[^\]]+\] succeeded")


# Processes and their memory --------------------------------------------------------------


def _group_rss_bytes(group: int) -> int:
    """Resident memory of every process in the process group (a worker and its children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) != group:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def _open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


@dataclass
class Stack:
    """The worker, beat and mailidle as ops run them, with their logs and peak memory."""

    logs: Path
    broker: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    def log(self, name: str) -> bytes:
        path = self.logs / f"{name}.log"
        return path.read_bytes() if path.exists() else b""

    def sample_memory(self) -> None:
        while not self._stop_sampling.wait(1.0):
            for name in ("worker", "mailidle"):
                rss = _group_rss_bytes(self.processes[name].pid)
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)

    def rss_now(self) -> dict[str, int]:
        return {name: _group_rss_bytes(self.processes[name].pid) for name in ("worker", "mailidle")}

    @property
    def mailidle_pid(self) -> int:
        return self.processes["mailidle"].pid


def _purge_queues() -> None:
    """Tasks left in the broker by an earlier row would run against this row's mailboxes."""
    from servicedesk.celery import app

    app.control.purge()


@contextmanager
def production_stack() -> Iterator[Stack]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    broker = "redis" if os.environ.get("REDIS_URL") else "filesystem"
    if broker == "redis":
        env["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
        os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
    _purge_queues()
    logs = Path(tempfile.mkdtemp(prefix="bench-many-"))
    stack = Stack(logs=logs, broker=broker)
    celery = [sys.executable, "-m", "celery", "-A", "servicedesk"]
    stack.started_at = time.monotonic()
    stack.processes["worker"] = _start(
        [*celery, "worker", "--loglevel=INFO", "--concurrency=2",
         f"--hostname=bench-many-{os.getpid()}@%h"],
        logs / "worker.log",
        env,
    )  # fmt: skip
    stack.processes["beat"] = _start(
        [*celery, "beat", "--loglevel=INFO", f"--schedule={logs / 'celerybeat-schedule'}"],
        logs / "beat.log",
        env,
    )
    stack.processes["mailidle"] = _start(
        [sys.executable, "manage.py", "mailidle"], logs / "mailidle.log", env
    )
    sampler = threading.Thread(target=stack.sample_memory, daemon=True)
    sampler.start()
    try:
        yield stack
    finally:
        stack._stop_sampling.set()
        for process in stack.processes.values():
            # The main process only: a worker's warm shutdown lets its children end their
            # passes; SIGTERM to the children themselves would lose them mid-pass.
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in stack.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children left behind
        _purge_queues()


# Mailboxes ----------------------------------------------------------------------------------


def create_mailboxes(bench: Any, count: int, *, poll_interval: int) -> list[Any]:
    """`count` IMAP integrations with push on, each reading its own new Dovecot account.

    The first is saved as an admin's form would (validated, its password encrypted); the
    others are copies of it in one statement, each with its own account: a thousand go in
    a second instead of a minute of validation that would check the same things."""
    from integrations.models import EmailIntegration
    from tests.dovecot import new_accounts

    usernames, password = new_accounts(bench.dovecot, count)
    first = bench.integration(
        sending=False,
        incoming_username=usernames[0],
        use_idle=True,
        poll_interval_seconds=poll_interval,
    )
    # bench.integration made an account of its own; this one uses the shared password.
    first.incoming_password = password
    first.save(update_fields=["incoming_password"])
    first = EmailIntegration.objects.get(pk=first.pk)  # as stored: defaults and all
    fields = {
        f.attname: getattr(first, f.attname)
        for f in EmailIntegration._meta.concrete_fields
        if not f.primary_key and f.attname not in ("incoming_username", "is_default")
    }
    copies = [
        EmailIntegration(**fields, incoming_username=username, is_default=False)
        for username in usernames[1:]
    ]
    for number, copy in enumerate(copies, start=2):
        copy.name = f"{first.name} mailbox {number}"
    EmailIntegration.objects.bulk_create(copies, batch_size=500)
    return list(EmailIntegration.objects.filter(incoming_username__in=usernames).order_by("pk"))


def fill(bench: Any, integration: Any, emails: int, *, label: str) -> None:
    from tests.mail import make_email

    bench.dovecot.deliver(
        integration.incoming_username,
        [make_email(subject=f"{label} {integration.pk} #{n}") for n in range(emails)],
    )


def retire(integrations: list[Any]) -> None:
    """Later rows (and their mailidle) must not read these mailboxes."""
    from integrations.models import EmailIntegration

    EmailIntegration.objects.filter(pk__in=[i.pk for i in integrations]).update(
        incoming_enabled=False, use_idle=False
    )


def imported(integration_ids: list[int]) -> int:
    """Emails of these mailboxes stored, as new records or added to one (the desk threads
    several emails of one sender into one record)."""
    from records.models import Message

    return Message.objects.filter(integration_id__in=integration_ids).count()


def listening(integration_ids: list[int]) -> int:
    from mailworker.idle import STATUS_LISTENING
    from mailworker.models import MailboxState

    return MailboxState.objects.filter(
        integration_id__in=integration_ids, idle_status=STATUS_LISTENING
    ).count()


def _wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Polled every 0.25 s: the database serves the desk meanwhile."""
    _wait(condition, timeout=timeout, what=what, interval=0.25)


def new_mail_latency(bench: Any, integration: Any, subject: str) -> float:
    """From delivery into the mailbox to its email being stored (a new record, or a message
    added to the sender's open one)."""
    from records.models import Message
    from tests.mail import make_email

    bench.dovecot.deliver(integration.incoming_username, make_email(subject=subject))
    delivered = time.monotonic()
    _wait(
        lambda: Message.objects.filter(subject=subject).exists(),
        timeout=RECORD_TIMEOUT_SECONDS,
        what=f"{subject} to become a record",
        interval=0.02,
    )
    return time.monotonic() - delivered


def after_dispatch_latencies(
    bench: Any, stack: Stack, integrations: list[Any], *, emails: int, label: str
) -> list[float]:
    """Emails delivered one by one right after beat sends `dispatch_due_polls`, so their
    passes compete with the wave of routine re-polls it queues."""
    latencies: list[float] = []
    seen = len(DISPATCH_SENT.findall(stack.log("beat")))
    timeout = float(os.environ.get("POLL_DISPATCH_SECONDS", "15")) * 3 + 10
    while len(latencies) < emails:
        _wait(
            lambda seen=seen: len(DISPATCH_SENT.findall(stack.log("beat"))) > seen,
            timeout=timeout,
            what="beat to dispatch the due polls",
            interval=0.02,
        )
        seen = len(DISPATCH_SENT.findall(stack.log("beat")))
        for _ in range(min(EMAILS_PER_WAVE, emails - len(latencies))):
            subject = f"{label} after dispatch {len(latencies):02d}"
            latencies.append(new_mail_latency(bench, random.choice(integrations), subject))
    return latencies


def _latency_text(latencies: list[float]) -> str:
    return f"{statistics.median(latencies):.2f} / {max(latencies):.2f} s"


def _latency_met(latencies: list[float]) -> bool:
    return (
        statistics.median(latencies) <= MEDIAN_TARGET_SECONDS
        and max(latencies) <= WORST_TARGET_SECONDS
    )


def _inotify_warnings(bench: Any) -> int:
    """IMAP sessions of Dovecot past the inotify limit: they see new mail only every
    mailbox_idle_check_interval (tests/dovecot.py), which adds to the latency."""
    log = bench.dovecot.log_path.read_text(errors="replace")
    return log.count("Inotify instance limit")


def _megabytes(value: int) -> str:
    return f"{value / 1024 / 1024:.0f} MB"


def _dispatches(stack: Stack) -> list[tuple[float, int]]:
    """(seconds, passes queued) of each dispatch_due_polls the worker ran."""
    return [
        (float(seconds), int(count))
        for seconds, count in DISPATCH_DONE.findall(stack.log("worker"))
    ]


# Row: many mailboxes --------------------------------------------------------------------


def many_mailboxes(bench: Any) -> list[Row]:
    count = bench.options.mailboxes
    per_mailbox = bench.options.mailbox_emails
    integrations = create_mailboxes(bench, count, poll_interval=bench.options.poll_interval)
    ids = [integration.pk for integration in integrations]
    for integration in integrations:
        fill(bench, integration, per_mailbox, label="Many")
    expected = count * per_mailbox
    try:
        with production_stack() as stack:
            _wait_until(
                lambda: imported(ids) >= expected,
                timeout=max(300.0, count * 0.6),
                what=f"{expected} emails of {count} mailboxes to become records",
            )
            first_passes = time.monotonic() - stack.started_at  # from start, boot included
            _wait_until(
                lambda: listening(ids) >= count,
                timeout=max(120.0, count * 0.2),
                what=f"mailidle to listen on {count} mailboxes",
            )
            held = listening(ids)
            sockets = _open_sockets(stack.mailidle_pid)
            quiet = [
                new_mail_latency(bench, random.choice(integrations), f"Many new {n:02d}")
                for n in range(NEW_EMAILS)
            ]
            after_wave = after_dispatch_latencies(
                bench, stack, integrations, emails=NEW_EMAILS, label="Many"
            )
            rss = stack.rss_now()
            dispatches = _dispatches(stack)
            passes = len(PASS_DONE.findall(stack.log("worker")))
            limit_line = next(
                (line for line in stack.log("mailidle").splitlines() if b"open-file" in line), b""
            )
            took = time.monotonic() - stack.started_at
    finally:
        retire(integrations)
    details = {
        "mailboxes": count,
        "emails_per_mailbox": per_mailbox,
        "poll_interval_seconds": bench.options.poll_interval,
        "broker": stack.broker,
        "first_passes_seconds": first_passes,
        "idle_listening": held,
        "mailidle_sockets": sockets,
        "mailidle_open_file_limit": limit_line.decode(errors="replace"),
        "dovecot_inotify_warnings": _inotify_warnings(bench),
        "latencies": quiet,
        "latencies_after_dispatch": after_wave,
        "rss_bytes_at_end": rss,
        "peak_rss_bytes": stack.peak_rss,
        "dispatches_seconds_and_passes": dispatches,
        "passes_run": passes,
        "seconds_in_all": took,
        "logs": str(stack.logs),
    }
    largest_wave = max((queued for _seconds, queued in dispatches), default=0)
    return [
        Row(
            name=f"15. {count} mailboxes x {per_mailbox}: all first passes done",
            result=f"{first_passes:.1f} s ({expected} emails, from start; {stack.broker} broker)",
            target=f"<= {FIRST_PASSES_TARGET_SECONDS:.0f} s",
            met=first_passes <= FIRST_PASSES_TARGET_SECONDS,
            details=details,
        ),
        Row(
            name=f"15. {count} mailboxes: IDLE connections held by one mailidle",
            result=(
                f"{held} listening ({sockets} sockets open in mailidle)"
                + (
                    f"; Dovecot past its inotify limit in {warnings} sessions, see README"
                    if (warnings := details["dovecot_inotify_warnings"])
                    else ""
                )
            ),
            target=f"{count}",
            met=held >= count,
        ),
        Row(
            name=f"15. {count} mailboxes: new mail, median / worst ({NEW_EMAILS} emails)",
            result=_latency_text(quiet),
            target=f"<= {MEDIAN_TARGET_SECONDS} / {WORST_TARGET_SECONDS:.0f} s",
            met=_latency_met(quiet),
        ),
        Row(
            name=f"15. {count} mailboxes: new mail right after a dispatch wave",
            result=f"{_latency_text(after_wave)} (largest wave {largest_wave} passes)",
            target=f"<= {MEDIAN_TARGET_SECONDS} / {WORST_TARGET_SECONDS:.0f} s",
            met=_latency_met(after_wave),
        ),
        Row(
            name=f"15. {count} mailboxes: memory, worker (group) / mailidle",
            result=(
                f"{_megabytes(rss['worker'])} / {_megabytes(rss['mailidle'])} "
                f"(peak {_megabytes(stack.peak_rss.get('worker', 0))} / "
                f"{_megabytes(stack.peak_rss.get('mailidle', 0))})"
            ),
        ),
    ]


# Row: one big mailbox beside small ones -----------------------------------------------


def big_mailbox(bench: Any) -> list[Row]:
    big_emails = bench.options.big_emails
    small_count = bench.options.small_mailboxes
    per_mailbox = bench.options.mailbox_emails
    integrations = create_mailboxes(
        bench, small_count + 1, poll_interval=bench.options.poll_interval
    )
    big, small = integrations[0], integrations[1:]
    small_ids = [integration.pk for integration in small]
    fill(bench, big, big_emails, label="Big")
    for integration in small:
        fill(bench, integration, per_mailbox, label="Small")
    try:
        with production_stack() as stack:
            _wait_until(
                lambda: imported(small_ids) >= small_count * per_mailbox,
                timeout=max(300.0, small_count * 0.6),
                what="the small mailboxes' first passes",
            )
            small_first = time.monotonic() - stack.started_at
            _wait_until(
                lambda: listening(small_ids) >= small_count,
                timeout=max(120.0, small_count * 0.2),
                what=f"mailidle to listen on {small_count} mailboxes",
            )
            draining_at_start = imported([big.pk])
            # Emails one by one into random small mailboxes for as long as the big one drains.
            latencies: list[float] = []
            while len(latencies) < NEW_EMAILS and imported([big.pk]) < big_emails:
                subject = f"Small new {len(latencies):02d}"
                latencies.append(new_mail_latency(bench, random.choice(small), subject))
            drained_at_end = imported([big.pk])
            _wait_until(
                lambda: imported([big.pk]) >= big_emails,
                timeout=max(600.0, big_emails * 0.1),
                what=f"the big mailbox's {big_emails} emails to become records",
            )
            drain = time.monotonic() - stack.started_at
            rss = stack.rss_now()
    finally:
        retire(integrations)
    details = {
        "big_emails": big_emails,
        "small_mailboxes": small_count,
        "emails_per_small_mailbox": per_mailbox,
        "broker": stack.broker,
        "small_first_passes_seconds": small_first,
        "big_records_when_measuring_started": draining_at_start,
        "big_records_when_measuring_ended": drained_at_end,
        "latencies": latencies,
        "drain_seconds": drain,
        "rss_bytes_at_end": rss,
        "peak_rss_bytes": stack.peak_rss,
        "logs": str(stack.logs),
    }
    if latencies:
        latency = f"{_latency_text(latencies)} ({len(latencies)} emails while it drained; "
    else:
        latency = "none measured: it drained before the small ones were all read ("
    return [
        Row(
            name=(
                f"15. {big_emails} emails beside {small_count} small mailboxes: "
                f"small ones' new mail, median / worst"
            ),
            result=f"{latency}small ones' first passes {small_first:.0f} s)",
            target=(
                f"<= {MEDIAN_TARGET_SECONDS} / {WORST_TARGET_SECONDS:.0f} s, {NEW_EMAILS} emails"
            ),
            met=len(latencies) == NEW_EMAILS and _latency_met(latencies),
            details=details,
        ),
        Row(
            name=f"15. {big_emails} emails beside {small_count} small mailboxes: drain rate",
            result=f"{big_emails / drain:.0f} emails/s ({drain:.0f} s from start)",
        ),
    ]
