"""Fixtures shared by the whole suite: people, integrations, and the real servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, models

from integrations.models import EmailIntegration
from integrations.services import Secrets, save_integration
from mailworker.models import NotificationSettings

pytest_plugins = [
    "tests.browser",
    "tests.dovecot",
    "tests.smtpd",
    "tests.workers",
    "tests.oauth_server",
    "tests.graph_server",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On SQLite the test database is a file, not pytest-django's in-memory one, so that the
    worker processes some tests start (Celery, mailidle, fetchmail) share it."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        path = tmp_path_factory.mktemp("database") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2 at Django's cost takes about 0.45 s a hash on these machines; what the tests check
    # does not depend on the hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _outbox_sent_by_the_tests(settings: Any) -> None:
    # Tests drain the outbox themselves (send_due), against their own SMTP server.
    settings.OUTBOX_SEND_ON_COMMIT = False


@pytest.fixture(autouse=True)
def _media_in_tmp(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _default_statuses(request: pytest.FixtureRequest) -> None:
    """The default statuses come from a data migration; a transactional test (live_server)
    flushes every table when it ends, so put them back for the tests that follow it."""
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    if names & {"transactional_db", "live_server"} or (
        marker is not None and marker.kwargs.get("transaction", False)
    ):
        request.getfixturevalue("transactional_db")
    elif marker is not None or "db" in names:
        request.getfixturevalue("db")
    else:
        return
    from records.services import ensure_default_statuses

    ensure_default_statuses()


def stored_column(row: models.Model, column: str) -> str:
    """A column as the database holds it, past the field that decrypts it (`row`: an
    integration, its OAuthGrant, ...)."""
    table = connection.ops.quote_name(row._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {connection.ops.quote_name(column)} FROM {table} WHERE id = %s",  # noqa: S608
            [row.pk],
        )
        return cursor.fetchone()[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# People ---------------------------------------------------------------------------------


@pytest.fixture
def quiet(db: Any) -> None:
    """Only the emails a test queues itself: no automatic notifications."""
    NotificationSettings.objects.update_or_create(
        pk=1,
        defaults={
            "end_user_on_created": False,
            "admins_on_created": False,
            "admins_on_updated": False,
            "end_user_on_details_changed": False,
            "admins_on_details_changed": False,
        },
    )


@pytest.fixture
def admin_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(
        username="admin", email="admin@desk.test", password=ADMIN_PASSWORD
    )


@pytest.fixture
def make_staff(django_user_model: Any) -> Callable[..., Any]:
    """A staff user holding exactly the named permissions (codename in integrations)."""

    def make(username: str = "agent", *codenames: str) -> Any:
        user = django_user_model.objects.create_user(
            username=username, email=f"{username}@desk.test", password=ADMIN_PASSWORD, is_staff=True
        )
        if codenames:
            user.user_permissions.set(
                Permission.objects.filter(
                    content_type__app_label="integrations", codename__in=codenames
                )
            )
        return user

    return make


@pytest.fixture
def make_agent(django_user_model: Any) -> Callable[..., Any]:
    """A staff user holding exactly the named permissions of the records app."""

    def make(username: str = "agent", *codenames: str, **fields: Any) -> Any:
        user = django_user_model.objects.create_user(
            username=username,
            email=f"{username}@desk.test",
            password=ADMIN_PASSWORD,
            is_staff=True,
            **fields,
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="records", codename__in=codenames)
        )
        return user

    return make


@pytest.fixture
def end_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(
        username="enduser", email="jane@customer.test", password=ADMIN_PASSWORD
    )


# Integrations ---------------------------------------------------------------------------


def incoming_imap(**overrides: Any) -> dict[str, Any]:
    values = {
        "name": "Support",
        "incoming_enabled": True,
        "incoming_protocol": "imap",
        "incoming_server": "mail.example.com",
        "incoming_encryption": "ssl",
        "incoming_username": "support@example.com",
    }
    values.update(overrides)
    return values


def outgoing_smtp(**overrides: Any) -> dict[str, Any]:
    values = {
        "name": "Outbound",
        "outgoing_enabled": True,
        "email_address": "support@example.com",
        "smtp_host": "smtp.example.com",
        "smtp_encryption": "tls",
    }
    values.update(overrides)
    return values


@pytest.fixture
def make_integration(db: Any) -> Callable[..., EmailIntegration]:
    """Create an integration through the service, as the screens and the import do."""

    def make(
        *,
        incoming_password: str | None = "mailbox-secret",
        smtp_password: str | None = None,
        **fields: Any,
    ) -> EmailIntegration:
        if not fields:
            fields = incoming_imap()
        return save_integration(
            integration=EmailIntegration(**fields),
            secrets=Secrets(incoming_password=incoming_password, smtp_password=smtp_password),
        )

    return make


# Real servers ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL when set (CI uses the local one), else our own on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
