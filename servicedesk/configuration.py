"""Pure helpers for settings.py: parse the environment and refuse unsafe production setups.

They raise `ImproperlyConfigured` with a message that names the variable and says how to fix
it, so a container that is misconfigured stops at start instead of running insecurely.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import environ
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.exceptions import ImproperlyConfigured

EDITIONS = ("basic", "full", "enterprise")
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1", "testserver"}
# Values that appear in examples and must never be used as a real key.
PLACEHOLDER_SECRET_KEYS = {"", "change-me", "changeme", "secret", "insecure", "django-insecure"}
MIN_SECRET_KEY_LENGTH = 50
GENERATE_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"


def is_public_host(host: str) -> bool:
    """True when a host in ALLOWED_HOSTS can be reached from outside this machine."""
    host = host.strip().lower()
    if host in LOOPBACK_HOSTS:
        return False
    if host == "*" or host.startswith("."):
        return True
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


def load_or_create_local_secret_key(data_dir: Path) -> str:
    """A random SECRET_KEY kept in DATA_DIR, for the embedded default only.

    Production (a public host) must set SECRET_KEY itself; `check_production_settings`
    refuses to start otherwise.
    """
    key_file = data_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    key = secrets.token_urlsafe(50)
    # O_EXCL: two processes of `make run` starting together must agree on one key.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def derive_field_encryption_keys(*, field_encryption_key: str, secret_key: str) -> list[bytes]:
    """Fernet keys for secrets at rest: FIELD_ENCRYPTION_KEY, else derived from SECRET_KEY.

    FIELD_ENCRYPTION_KEY may hold several comma-separated keys: the first encrypts, every
    one decrypts, so a key can be rotated without losing stored passwords.
    """
    if not field_encryption_key.strip():
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"servicedesk field encryption"
        )
        return [base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))]
    keys = []
    for raw in field_encryption_key.split(","):
        candidate = raw.strip().encode()
        try:
            decoded = base64.urlsafe_b64decode(candidate)
        except (ValueError, TypeError):
            decoded = b""
        if len(decoded) != 32:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEY is not a valid key: each comma-separated key must be 32 "
                "url-safe base64-encoded bytes. Generate one with: python -c 'from "
                "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            )
        keys.append(candidate)
    return keys


def check_production_settings(
    *,
    debug: bool,
    allowed_hosts: list[str],
    secret_key_from_env: str,
    edition: str,
) -> None:
    """Refuse settings that are unsafe once the desk is reachable from other machines."""
    if edition not in EDITIONS:
        raise ImproperlyConfigured(
            f"EDITION={edition!r} is not known: set EDITION to one of {', '.join(EDITIONS)}."
        )
    public_hosts = [host for host in allowed_hosts if is_public_host(host)]
    if not public_hosts:
        return
    named = ", ".join(public_hosts)
    if debug:
        raise ImproperlyConfigured(
            f"DEBUG is on while ALLOWED_HOSTS names public hosts ({named}): DEBUG pages leak "
            "settings and code. Set DEBUG=false, or list only 127.0.0.1/localhost in "
            "ALLOWED_HOSTS for a local run."
        )
    if not secret_key_from_env:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set, and ALLOWED_HOSTS names public hosts ({named}). Set "
            f"SECRET_KEY to a long random value, e.g. {GENERATE_KEY_HINT}"
        )
    if (
        secret_key_from_env.strip().lower() in PLACEHOLDER_SECRET_KEYS
        or secret_key_from_env.startswith("django-insecure")
        or len(secret_key_from_env) < MIN_SECRET_KEY_LENGTH
        or len(set(secret_key_from_env)) < 5
    ):
        raise ImproperlyConfigured(
            "SECRET_KEY is a placeholder or too weak (it needs at least "
            f"{MIN_SECRET_KEY_LENGTH} random characters). Set SECRET_KEY to a new value, "
            f"e.g. {GENERATE_KEY_HINT}"
        )


def database_settings(database_url: str, *, sqlite_path: Path) -> dict[str, Any]:
    """DATABASE_URL as Django database settings; SQLite under DATA_DIR when unset."""
    if not database_url:
        database_url = f"sqlite:///{sqlite_path}"
    scheme = database_url.split("://", 1)[0]
    try:
        if scheme not in environ.Env.DB_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}")
        config = environ.Env.db_url_config(database_url)
    except (ImproperlyConfigured, KeyError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"DATABASE_URL={database_url!r} cannot be read ({exc}). Use e.g. "
            "postgres://user:password@host:5432/servicedesk or sqlite:////path/to/db.sqlite3"
        ) from exc
    engine = config.get("ENGINE", "")
    if engine.endswith("sqlite3"):
        # The web, the worker and beat write to one file: wait for the lock instead of
        # failing, take the write lock at BEGIN (no upgrade deadlocks), and let readers
        # go on while a writer works (WAL).
        config.setdefault("OPTIONS", {}).update(
            {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            }
        )
    elif engine.endswith("postgresql"):
        config.setdefault("CONN_MAX_AGE", 60)
        config.setdefault("CONN_HEALTH_CHECKS", True)
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    return config


@dataclass(frozen=True)
class BrokerSettings:
    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)


def broker_settings(
    broker_url: str, *, data_dir: Path, visibility_timeout: int = 3600
) -> BrokerSettings:
    """CELERY_BROKER_URL, or kombu's filesystem transport under DATA_DIR when unset."""
    if broker_url and not broker_url.startswith("filesystem://"):
        options: dict[str, Any] = {}
        if broker_url.startswith(("redis://", "rediss://")):
            # Longer than any pass over a mailbox, so a task acked late is not redelivered
            # to a second worker while the first still works on it.
            options = {"visibility_timeout": visibility_timeout, "socket_connect_timeout": 5}
        return BrokerSettings(url=broker_url, transport_options=options)
    folder = data_dir / "broker"
    queue_folder = folder / "queue"
    processed_folder = folder / "processed"
    control_folder = folder / "control"
    for path in (queue_folder, processed_folder, control_folder):
        path.mkdir(parents=True, exist_ok=True)
    return BrokerSettings(
        url="filesystem://",
        transport_options={
            "data_folder_in": str(queue_folder),
            "data_folder_out": str(queue_folder),
            "processed_folder": str(processed_folder),
            "control_folder": str(control_folder),
            "store_processed": False,
        },
    )
