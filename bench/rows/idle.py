"""Row 5: IMAP IDLE latency, from delivery into the mailbox to the record existing, through
the whole chain as ops run it: `manage.py mailidle` hears the server's EXISTS and queues a
pass, a Celery worker runs it. Polling is an hour away, so only push can be this fast."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.environment import PROJECT_ROOT
from bench.rows import Row

EMAILS = 20
TARGET_SECONDS = 3.0  # "about a second instead of a poll interval"; a few seconds at worst


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(condition, *, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def idle_latency(bench) -> list[Row]:
    if not bench.primary:
        return []
    from mailworker.models import MailboxState
    from records.models import ServiceRecord
    from tests.mail import make_email

    integration = bench.integration(sending=False, poll_interval_seconds=3600)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    broker = "redis" if os.environ.get("REDIS_URL") else "filesystem"
    if broker == "redis":
        env["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
    logs = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    worker = _start(
        [sys.executable, "-m", "celery", "-A", "servicedesk", "worker", "--pool=solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel=INFO", f"--hostname=bench-{os.getpid()}@%h"],
        logs / "worker.log",
        env,
    )  # fmt: skip
    listener = _start([sys.executable, "manage.py", "mailidle"], logs / "mailidle.log", env)
    latencies: list[float] = []
    try:
        _wait(
            lambda: b"ready." in (logs / "worker.log").read_bytes(),
            timeout=60,
            what="the Celery worker",
        )
        _wait(
            lambda: MailboxState.objects.filter(
                integration_id=integration.pk, idle_status="listening"
            ).exists(),
            timeout=60,
            what="mailidle to listen",
        )
        for n in range(EMAILS):
            subject = f"IDLE bench {n:02d}"
            bench.dovecot.deliver(integration.incoming_username, make_email(subject=subject))
            delivered = time.monotonic()
            _wait(
                lambda subject=subject: ServiceRecord.objects.filter(title=subject).exists(),
                timeout=30,
                what=f"{subject} to become a record",
            )
            latencies.append(time.monotonic() - delivered)
    finally:
        for process in (listener, worker):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
    median, worst = statistics.median(latencies), max(latencies)
    return [
        Row(
            name=f"5. IDLE: delivery to record, {EMAILS} emails",
            result=f"median {median:.2f} s, worst {worst:.2f} s ({broker} broker)",
            target=f"worst <= {TARGET_SECONDS:.0f} s",
            met=worst <= TARGET_SECONDS,
            details={"latencies": latencies, "broker": broker},
        )
    ]
