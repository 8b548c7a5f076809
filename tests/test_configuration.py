"""Settings come from the environment; unsafe production settings stop the start with a
message that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from servicedesk.configuration import (
    broker_settings,
    check_production_settings,
    database_settings,
    derive_field_encryption_keys,
    is_public_host,
)
from tests.conftest import PROJECT_ROOT

STRONG_KEY = "k" * 30 + "Zq8!xY2#pL0@vB7$nM4%wR9^tE5&uI3*"


def start_django(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`manage.py check` in a clean environment: what a container does at start."""
    base = {"PATH": os.environ["PATH"], "DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("[::1]", False),
        ("desk.example.com", True),
        ("10.0.0.5", True),
        ("*", True),
        (".example.com", True),
    ],
)
def test_public_hosts_are_recognised(host: str, public: bool) -> None:
    assert is_public_host(host) is public


def test_no_environment_at_all_starts(tmp_path: Path) -> None:
    result = start_django({}, tmp_path)
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "data" / "secret_key"
    assert len(key_file.read_text()) >= 50
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_a_public_host_without_secret_key_is_refused(tmp_path: Path) -> None:
    result = start_django({"ALLOWED_HOSTS": "desk.example.com"}, tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_with_a_public_host_is_refused(tmp_path: Path) -> None:
    result = start_django(
        {"ALLOWED_HOSTS": "desk.example.com", "DEBUG": "true", "SECRET_KEY": STRONG_KEY}, tmp_path
    )
    assert result.returncode != 0
    assert "DEBUG is on while ALLOWED_HOSTS names public hosts (desk.example.com)" in result.stderr


@pytest.mark.parametrize("weak", ["change-me", "django-insecure-abc" + "x" * 60, "short-key"])
def test_a_placeholder_or_weak_secret_key_is_refused(weak: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is a placeholder or too weak"):
        check_production_settings(
            debug=False,
            allowed_hosts=["desk.example.com"],
            secret_key_from_env=weak,
            edition="full",
        )


def test_a_safe_production_configuration_starts(tmp_path: Path) -> None:
    result = start_django(
        {"ALLOWED_HOSTS": "desk.example.com", "SECRET_KEY": STRONG_KEY, "EDITION": "enterprise"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_an_unknown_edition_is_refused(tmp_path: Path) -> None:
    result = start_django({"EDITION": "platinum"}, tmp_path)
    assert result.returncode != 0
    assert "EDITION='platinum' is not known" in result.stderr


def test_a_malformed_field_encryption_key_is_refused(tmp_path: Path) -> None:
    result = start_django({"FIELD_ENCRYPTION_KEY": "too-short"}, tmp_path)
    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEY is not a valid key" in result.stderr


def test_field_encryption_key_derives_from_secret_key_when_unset() -> None:
    first = derive_field_encryption_keys(field_encryption_key="", secret_key="a" * 50)
    again = derive_field_encryption_keys(field_encryption_key="", secret_key="a" * 50)
    other = derive_field_encryption_keys(field_encryption_key="", secret_key="b" * 50)
    assert first == again != other


def test_database_url_chooses_postgresql_and_sqlite_gets_concurrency_options(
    tmp_path: Path,
) -> None:
    postgres = database_settings(
        "postgres://desk:pw@db.internal:5432/servicedesk", sqlite_path=tmp_path / "x"
    )
    assert postgres["ENGINE"] == "django.db.backends.postgresql"
    assert (postgres["HOST"], postgres["NAME"]) == ("db.internal", "servicedesk")
    sqlite = database_settings("", sqlite_path=tmp_path / "desk.sqlite3")
    assert sqlite["ENGINE"] == "django.db.backends.sqlite3"
    assert sqlite["NAME"] == str(tmp_path / "desk.sqlite3")
    assert sqlite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_a_bad_database_url_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_settings("nosuchdb://x", sqlite_path=tmp_path / "x")


def test_broker_defaults_to_the_filesystem_transport(tmp_path: Path) -> None:
    broker = broker_settings("", data_dir=tmp_path)
    assert broker.url == "filesystem://localhost/"
    assert broker.transport == "servicedesk.broker:FilesystemTransport"
    assert Path(broker.transport_options["data_folder_in"]).is_dir()
    redis = broker_settings("redis://127.0.0.1:6379/0", data_dir=tmp_path)
    assert redis.url == "redis://127.0.0.1:6379/0"
    assert redis.transport_options["visibility_timeout"] >= 3600


def test_a_negative_number_of_parse_processes_is_refused(tmp_path: Path) -> None:
    result = start_django({"INGEST_PARSE_PROCESSES": "-1"}, tmp_path)
    assert result.returncode != 0
    assert "INGEST_PARSE_PROCESSES=-1: use 0 to parse in the pass's own process" in result.stderr
