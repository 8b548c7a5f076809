"""GET /healthz: database, broker and worker heartbeat; 200 only when all are well."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from mailworker.models import WorkerHeartbeat
from mailworker.services import record_worker_heartbeat
from tests.conftest import PROJECT_ROOT, free_port

pytestmark = pytest.mark.django_db


def test_no_worker_heartbeat_yet_is_unhealthy(client: Client) -> None:
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is True
    assert body["worker"] == {
        "ok": False,
        "last_heartbeat_age_seconds": None,
        "max_age_seconds": 120.0,
    }


def test_a_fresh_heartbeat_makes_it_healthy(client: Client) -> None:
    record_worker_heartbeat(hostname="worker@test")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["worker"]["last_heartbeat_age_seconds"] < 5


def test_a_stale_heartbeat_is_unhealthy(client: Client) -> None:
    WorkerHeartbeat.objects.create(
        hostname="worker@old", beat_at=timezone.now() - timedelta(minutes=10)
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["worker"]["last_heartbeat_age_seconds"] >= 600


def test_an_unreachable_broker_is_unhealthy(client: Client, settings) -> None:
    record_worker_heartbeat(hostname="worker@test")
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"]["ok"] is False


def test_a_real_redis_broker_is_healthy(client: Client, settings, redis_url: str) -> None:
    record_worker_heartbeat(hostname="worker@test")
    settings.CELERY_BROKER_URL = redis_url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2}
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json()["broker"] == {"ok": True, "detail": "redis"}


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_or_kill_procfile(honcho: subprocess.Popen, timeout: float) -> bool:
    """Wait for honcho to stop its processes and exit; if it does not, SIGKILL it and the
    processes it started (each in a session of its own) so that none outlives the test."""
    try:
        honcho.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        pass
    children = subprocess.run(
        ["pgrep", "-P", str(honcho.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    grandchildren = [
        pid
        for child in children
        for pid in subprocess.run(
            ["pgrep", "-P", child], capture_output=True, text=True, check=False
        ).stdout.split()
    ]
    for pid in grandchildren:  # honcho's per-process helpers each lead a session: kill it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
    os.killpg(honcho.pid, signal.SIGKILL)
    honcho.wait(timeout=30)
    return False


def test_make_run_processes_become_healthy_and_stop_together(tmp_path: Path) -> None:
    """The Procfile that `make run` starts: web, worker, beat and mailidle on SQLite and the
    filesystem broker, with no other server; healthy once the worker's heartbeat arrives."""
    port = free_port()
    venv_bin = str(Path(os.sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "DATA_DIR": str(tmp_path / "data"),
        "WEB_BIND": f"127.0.0.1:{port}",
        "HEARTBEAT_INTERVAL_SECONDS": "2",
        "DATABASE_URL": "",
        "CELERY_BROKER_URL": "",
    }
    subprocess.run(
        [f"{venv_bin}/python", "manage.py", "migrate", "--noinput"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(
        [f"{venv_bin}/honcho", "--procfile", "Procfile", "start"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        status, body = 0, {}
        while time.monotonic() < deadline:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, (body, (tmp_path / "honcho.log").read_text()[-3000:])
        assert body["broker"]["detail"] == "filesystem"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=5) as page:  # noqa: S310
            assert b"Log in" in page.read()
    finally:
        # SIGTERM, not SIGINT: a shell without job control starts background jobs with SIGINT
        # ignored, and honcho treats both alike.
        honcho.send_signal(signal.SIGTERM)
        stopped = wait_or_kill_procfile(honcho, timeout=60)
        log.close()
    output = (tmp_path / "honcho.log").read_text()
    assert stopped, f"honcho did not stop within 60 s after SIGTERM:\n{output[-4000:]}"
    assert "mailidle: listening for new mail" in output, output[-3000:]
    for process in ("web.1", "worker.1", "beat.1", "idle.1"):
        assert f"{process} stopped" in output, output[-3000:]
