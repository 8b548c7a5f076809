"""Where a suite runs: its own database (created and dropped here) and its own data
directory, and the real servers of the tests (Dovecot, aiosmtpd) on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "servicedesk_benchrun"


@dataclass(frozen=True)
class Backend:
    """A database the suite runs on: `url` is what DATABASE_URL is set to."""

    name: str  # "sqlite" or "postgresql"
    url: str
    data_dir: Path


def backends(database_url: str) -> list[str]:
    return ["sqlite", "postgresql"] if database_url.startswith("postgres") else ["sqlite"]


def _postgres_admin_url(database_url: str) -> tuple[str, str]:
    """(url of the server's maintenance database, url of the bench's own database)."""
    parts = urlsplit(database_url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    own = urlunsplit(parts._replace(path=f"/{BENCH_DATABASE}"))
    return admin, own


def create_backend(name: str, *, database_url: str) -> Backend:
    """A fresh database: a new SQLite file on disk, or a new PostgreSQL database next to the
    one DATABASE_URL names (dropped first if a killed run left it)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"servicedesk-bench-{name}-"))
    if name == "sqlite":
        return Backend(name, f"sqlite:///{data_dir / 'bench.sqlite3'}", data_dir)
    import psycopg

    admin, own = _postgres_admin_url(database_url)
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    return Backend(name, own, data_dir)


def drop_backend(backend: Backend, *, database_url: str) -> None:
    shutil.rmtree(backend.data_dir, ignore_errors=True)
    if backend.name != "postgresql":
        return
    import psycopg

    admin, _own = _postgres_admin_url(database_url)
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')


def suite_environment(backend: Backend) -> dict[str, str]:
    """The environment of the suite and of the commands it runs (fetchmail)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "servicedesk.settings",
        "DATABASE_URL": backend.url,
        "DATA_DIR": str(backend.data_dir),
        "MEDIA_ROOT": str(backend.data_dir / "media"),
        "LOG_LEVEL": "WARNING",
        # The corpus is ordinary mail from 300 people of one company, many writing again and
        # again: measured as an import, not held as a flood (0 turns a flood limit off).
        "FLOOD_RECORDS_PER_SENDER_PER_HOUR": "0",
        "FLOOD_RECORDS_PER_DOMAIN_PER_HOUR": "0",
    }
