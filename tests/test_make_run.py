"""`make run` as a new admin uses it: honcho starts web, worker, beat and mailidle from the
Procfile on the embedded default (SQLite, the filesystem broker), and Ctrl-C stops every one
of them warmly, before honcho's grace time ends and it kills what is left. Also: the default
broker makes kombu warn about no host name nowhere."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.worker import state
from kombu import Connection

from servicedesk.configuration import broker_settings
from tests.conftest import PROJECT_ROOT, free_port

BIN = Path(sys.executable).parent


def wait_for(process: subprocess.Popen, output: Path, text: str) -> None:
    deadline = time.monotonic() + 90
    while text not in output.read_text(errors="replace"):
        assert process.poll() is None, output.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in:\n{output.read_text()}"
        time.sleep(0.2)


def test_ctrl_c_stops_web_worker_beat_and_mailidle_warmly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(PROJECT_ROOT),
        "DATA_DIR": str(tmp_path / "data"),
        "WEB_BIND": f"127.0.0.1:{port}",
        "HOME": str(tmp_path),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    output = tmp_path / "honcho.log"
    with output.open("wb") as sink:
        honcho = subprocess.Popen(
            [str(BIN / "honcho"), "--procfile", "Procfile", "--env", "/dev/null", "start"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(honcho, output, "worker@")
            wait_for(honcho, output, " ready.")
            wait_for(honcho, output, "listening for new mail")
            wait_for(honcho, output, "beat: Starting...")
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            honcho.send_signal(signal.SIGINT)  # what Ctrl-C at the terminal sends honcho
            honcho.wait(timeout=60)
        finally:
            if honcho.poll() is None:
                honcho.kill()
    log = output.read_text(errors="replace")
    assert "SIGKILL" not in log, log
    assert "exited with 'signal" not in log and "exited prematurely" not in log, log
    for name in ("web.1", "worker.1", "beat.1", "idle.1"):
        assert f"{name} stopped (rc=0)" in log, log
    assert "worker: Warm shutdown" in log
    assert "No hostname was supplied" not in log


@pytest.fixture
def default_broker(tmp_path: Path) -> Connection:
    broker = broker_settings("", data_dir=tmp_path)
    connection = Connection(
        broker.url, transport=broker.transport, transport_options=broker.transport_options
    )
    yield connection
    connection.release()


def test_the_default_broker_names_a_host_so_kombu_does_not_warn(default_broker, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="kombu"):
        default_broker.as_uri()
        default_broker.info()
    assert "No hostname" not in caplog.text


def test_a_worker_asked_to_stop_stops_draining_the_default_broker(
    default_broker, monkeypatch
) -> None:
    """Celery's loop drains with a 2 s timeout; asked to stop, the drain ends at once
    instead of at the timeout (so this test would hang for a minute, not fail, if not)."""
    received: list[str] = []
    queue = default_broker.SimpleQueue("stop-test")
    queue.put("before the stop")
    consumer = default_broker.Consumer(
        queue.queue, callbacks=[lambda body, message: received.append(body) or message.ack()]
    )
    with consumer:
        monkeypatch.setattr(state, "should_stop", 0)  # Celery's flag: the exit code, 0
        default_broker.drain_events(timeout=60)  # a message waiting is delivered first
        assert received == ["before the stop"]
        with pytest.raises(TimeoutError):
            default_broker.drain_events(timeout=60)
    queue.close()
