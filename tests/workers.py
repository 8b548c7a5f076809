"""Real worker processes for the tests: Celery workers on a real Redis, `mailidle`, and
`manage.py` commands, all sharing the test database.

The processes are started the way ops start them (`celery -A servicedesk worker`, `manage.py
mailidle`), with DATABASE_URL pointing at the test database (a file on SQLite; see the root
conftest) and the broker at a Redis database of their own, flushed before and after. Tests
that use them need committed data: mark them `django_db(transaction=True)`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
from django.db import connection

from tests.conftest import PROJECT_ROOT

READY_TIMEOUT_SECONDS = 60.0


def test_database_url() -> str:
    """The test database as a DATABASE_URL, for processes the tests start."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(settings["NAME"])
        if name.startswith("file:") or name == ":memory:":
            pytest.fail("the SQLite test database must be a file for worker processes")
        return f"sqlite:///{name}"
    if connection.vendor == "postgresql":
        user = quote(settings.get("USER") or "")
        password = quote(settings.get("PASSWORD") or "")
        credentials = f"{user}:{password}@" if password else f"{user}@" if user else ""
        host = settings.get("HOST") or "127.0.0.1"
        port = settings.get("PORT") or 5432
        return f"postgres://{credentials}{host}:{port}/{settings['NAME']}"
    pytest.fail(f"no DATABASE_URL for {connection.vendor}")


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> Iterator[str]:
    """A Redis database of this test run's own: other runs may share the server at the same
    time, so a database is claimed with SET NX (expiring, in case a run dies) and emptied of
    anything but the claim; a database another run claimed is never touched."""
    parts = urlsplit(redis_url)
    owner = f"{os.getpid()}-{time.time()}"
    for database in random.Random(owner).sample(range(1, 16), 15):
        url = urlunsplit(parts._replace(path=f"/{database}"))
        client = redis.Redis.from_url(url)
        if client.set(BROKER_CLAIM_KEY, owner, nx=True, ex=BROKER_CLAIM_SECONDS):
            break
        client.close()
    else:
        pytest.fail(f"every database of the Redis at {redis_url} is claimed by another test run")
    stale = [key for key in client.scan_iter() if key != BROKER_CLAIM_KEY.encode()]
    if stale:
        client.delete(*stale)
    yield url
    client.flushdb()
    client.close()


BROKER_CLAIM_KEY = "servicedesk-tests:claimed-by"
BROKER_CLAIM_SECONDS = 3 * 3600


@dataclass
class ManagedProcess:
    """A process of the product, in its own process group (SIGKILL takes its children)."""

    name: str
    command: list[str]
    environment: dict[str, str]
    log_path: Path
    ready_text: str = ""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        if self.running:  # never lose the handle of a live process: it would outlive the run
            self.kill()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {self.starts}\n".encode())
        self._offset = self.log_path.stat().st_size
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=PROJECT_ROOT,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if self.ready_text:
            self.wait_for_output(self.ready_text)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mark_output(self) -> None:
        """wait_for_output() looks only at what is printed from now on."""
        self._offset = self.log_path.stat().st_size

    def wait_for_output(self, text: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                if text.encode() in log.read():
                    return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{self.name} did not print {text!r}:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a pulled plug would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Workers:
    """Starts the product's processes against the test database and the test broker."""

    broker_url: str
    directory: Path
    media_root: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def environment(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": test_database_url(),
                "CELERY_BROKER_URL": self.broker_url,
                "MEDIA_ROOT": str(self.media_root),
                "OUTBOX_SEND_ON_COMMIT": "false",
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def celery_worker(
        self, name: str = "worker", *, prefork: bool = False, **extra_env: str
    ) -> ManagedProcess:
        """A Celery worker that runs one task at a time: in its own process (solo), or with
        `prefork` in one pool child, as `make run` and docker-compose run workers."""
        pool = ["--pool=prefork", "--concurrency=1"] if prefork else ["--pool=solo"]
        return self._managed(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "servicedesk",
                "worker",
                *pool,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname={name}-{os.getpid()}@%h",
                "--loglevel=INFO",
            ],
            ready_text="ready.",
            **extra_env,
        )

    def manage(self, name: str, *arguments: str, ready_text: str = "", **extra_env: str):
        return self._managed(
            name,
            [sys.executable, "manage.py", *arguments],
            ready_text=ready_text,
            **extra_env,
        )

    def _managed(
        self, name: str, command: list[str], *, ready_text: str, **extra_env: str
    ) -> ManagedProcess:
        process = ManagedProcess(
            name=name,
            command=command,
            environment=self.environment(**extra_env),
            log_path=self.directory / f"{name}.log",
            ready_text=ready_text,
        )
        self.processes.append(process)
        return process

    def send(self, task: str, *args: object, queue: str | None = None, **kwargs: object) -> None:
        """Queue a task on the test broker, as beat or the IDLE listener would (`queue`: the
        default queue unless given)."""
        from kombu import Connection

        from servicedesk.celery import app

        with Connection(self.broker_url) as broker:
            app.send_task(task, args=args, kwargs=kwargs, connection=broker, queue=queue)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def workers(broker_url: str, tmp_path: Path, settings) -> Iterator[Workers]:
    pool = Workers(broker_url=broker_url, directory=tmp_path, media_root=Path(settings.MEDIA_ROOT))
    yield pool
    pool.stop_all()
    redis.Redis.from_url(broker_url).flushdb()


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, message: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    pytest.fail(message or f"condition not met within {timeout} s")
