"""Pure helpers for settings.py: parse the environment and refuse unsafe production setups.

They raise `ImproperlyConfigured` with a message that names the variable and says how to fix
it, so a container that is misconfigured stops at start instead of running insecurely.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import environ
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

EDITIONS = ("basic", "full", "enterprise")
# Files the desk writes (the SQLite database, the broker's messages, beat's schedule, uploaded
# attachments, locks) are for the desk's own user only: new files 0600, new folders 0700.
PRIVATE_UMASK = 0o077
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
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


def keep_new_files_private() -> None:
    """Every file and folder this process creates from now on is for its own user only.

    Called first thing by each way the desk starts (manage.py, the WSGI module, Celery's worker
    and beat), so files written by libraries too (SQLite's journal, kombu's filesystem broker,
    beat's schedule) are 0600 whatever the umask of the shell or container that started it.
    """
    os.umask(PRIVATE_UMASK)


def prepare_data_dir(path: Path) -> Path:
    """DATA_DIR, created 0700; an existing one that others may read is narrowed to 0700.

    The folder's mode protects whatever an older version or another tool left inside with
    wider modes. A folder this user does not own (a volume prepared by someone else) is left
    as it is, with a warning that says what to do.
    """
    path = path.resolve()
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(PRIVATE_DIRECTORY_MODE)
        except PermissionError:
            logger.warning(
                "DATA_DIR %s has mode %o and cannot be changed by this user: run "
                "`chmod 700 %s` as its owner so other users cannot read the desk's files.",
                path,
                mode,
                path,
            )
    return path


def private_subfolder(path: Path) -> Path:
    """A folder under DATA_DIR for the desk's own user (created 0700 when missing)."""
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    return path


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
    # A transport class in place of the one the URL names (CELERY_BROKER_TRANSPORT).
    transport: str | None = None


def broker_settings(
    broker_url: str, *, data_dir: Path, visibility_timeout: int = 3600
) -> BrokerSettings:
    """CELERY_BROKER_URL, or kombu's filesystem transport under DATA_DIR when unset."""
    if broker_url and not broker_url.startswith("filesystem://"):
        options: dict[str, Any] = {}
        if broker_url.startswith(("redis://", "rediss://")):
            # Longer than any pass over a mailbox, so a task acked late is not redelivered
            # to a second worker while the first still works on it.
            options = {
                "visibility_timeout": visibility_timeout,
                "socket_connect_timeout": 5,
                # The worker takes from its queues in the order they are listed
                # (CELERY_TASK_QUEUES): a new email's pass before routine polls.
                "queue_order_strategy": "priority",
            }
        return BrokerSettings(url=broker_url, transport_options=options)
    folder = data_dir / "broker"
    queue_folder = folder / "queue"
    processed_folder = folder / "processed"
    control_folder = folder / "control"
    private_subfolder(folder)
    for path in (queue_folder, processed_folder, control_folder):
        private_subfolder(path)
    return BrokerSettings(
        # A host name, though the transport uses none: without one kombu warns "No hostname
        # was supplied. Reverting to default 'localhost'" whenever it describes the
        # connection (every fetchmail and ingest_email run, every worker start).
        url="filesystem://localhost/",
        transport="servicedesk.broker:FilesystemTransport",
        transport_options={
            # How often an idle worker looks for new task files (kombu's default: 1 s). The
            # worker notices a stop request only between two looks, and honcho (`make run`)
            # kills what has not stopped 5 s after Ctrl-C; listing a folder is cheap.
            "polling_interval": 0.2,
            "data_folder_in": str(queue_folder),
            "data_folder_out": str(queue_folder),
            "processed_folder": str(processed_folder),
            "control_folder": str(control_folder),
            "store_processed": False,
        },
    )


# LOGIN_LOCKOUT_BY: what a run of failed logins locks out. "username+ip" (the default) locks
# that username from that address only, so an attacker elsewhere cannot lock a user out of the
# desk; "ip" locks the address for every username; "username" the username from everywhere.
# Several, comma-separated, lock when any one of them reaches the limit.
LOCKOUT_KEYS = {"username": "username", "ip": "ip_address"}


def lockout_parameters(value: str) -> list[str | list[str]]:
    """LOGIN_LOCKOUT_BY as django-axes' AXES_LOCKOUT_PARAMETERS."""
    parameters: list[str | list[str]] = []
    for alternative in value.split(","):
        names = [name.strip().lower() for name in alternative.split("+") if name.strip()]
        if not names or any(name not in LOCKOUT_KEYS for name in names):
            raise ImproperlyConfigured(
                f"LOGIN_LOCKOUT_BY={value!r} is not understood: use username+ip (the default), "
                "ip, username, or several of these separated by commas."
            )
        keys = [LOCKOUT_KEYS[name] for name in names]
        parameters.append(keys[0] if len(keys) == 1 else keys)
    return parameters


@dataclass(frozen=True)
class ClientAddressSource:
    """Where django-ipware reads a client's address (django-axes' AXES_IPWARE_* settings)."""

    headers: tuple[str, ...]
    # ipware counts the proxies listed in X-Forwarded-For after the client; the proxy nearest
    # to the desk is not listed there (it is REMOTE_ADDR).
    listed_proxies: int | None


def client_address_source(trusted_proxy_count: int) -> ClientAddressSource:
    """How the desk tells one client from another, for login throttling.

    With no proxy trusted, only the connection's own address counts: an X-Forwarded-For
    header is the client's own words and would let an attacker choose a new address for every
    guess. With N proxies in front, each appending the address it saw, the Nth entry from the
    right of X-Forwarded-For is the one the outermost proxy saw; entries left of it are again
    the client's own words.
    """
    if trusted_proxy_count < 0:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXY_COUNT={trusted_proxy_count}: use 0 when clients reach the web "
            "directly, or the number of reverse proxies in front of it that add to "
            "X-Forwarded-For (1 for one nginx, Caddy or Traefik)."
        )
    if trusted_proxy_count == 0:
        return ClientAddressSource(headers=("REMOTE_ADDR",), listed_proxies=None)
    return ClientAddressSource(
        headers=("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"), listed_proxies=trusted_proxy_count - 1
    )


DEFAULT_WEB_BIND = "127.0.0.1:8000"
# Addresses that mean "every interface": a browser on this machine reaches them on loopback.
ANY_ADDRESS_HOSTS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 (read, never bound)


def web_url(bind: str) -> str:
    """Where a browser on this machine finds the desk that gunicorn serves at `bind`
    (WEB_BIND, in gunicorn's --bind syntax: HOST:PORT, [IPv6]:PORT, HOST, or unix:PATH)."""
    bind = bind.strip() or DEFAULT_WEB_BIND
    if bind.startswith("unix:"):
        return f"the unix socket {bind[len('unix:') :]} (behind your web server)"
    if bind.startswith("[") and "]" in bind:
        host, _, rest = bind[1:].partition("]")
        host, port = f"[{host}]", rest.lstrip(":") or "8000"
    elif bind.count(":") == 1:
        host, port = bind.split(":")
    else:
        host, port = bind, "8000"  # gunicorn's own default port
    if host in ANY_ADDRESS_HOSTS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/"
