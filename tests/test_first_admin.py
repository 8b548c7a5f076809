"""`make run` creates the first admin when there is none and says how to log in."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.test import RequestFactory

pytestmark = pytest.mark.django_db


def log_in(username: str, password: str):
    """authenticate() as the login page calls it: django-axes checks every login against the
    request it came with (its address), so there is no login without one."""
    return authenticate(RequestFactory().post("/login/"), username=username, password=password)


def run() -> str:
    out = io.StringIO()
    call_command("create_first_admin", stdout=out)
    return out.getvalue()


def test_a_random_password_is_generated_printed_and_works(monkeypatch) -> None:
    for name in (
        "DJANGO_SUPERUSER_USERNAME",
        "DJANGO_SUPERUSER_PASSWORD",
        "DJANGO_SUPERUSER_EMAIL",
    ):
        monkeypatch.delenv(name, raising=False)
    output = run()
    password = output.split("password: ", 1)[1].split()[0]
    assert "http://127.0.0.1:8000/login/" in output
    assert len(password) >= 12
    user = log_in("admin", password)
    assert user is not None and user.is_superuser and user.is_staff


def test_credentials_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "boss")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long chosen passphrase")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "boss@desk.test")
    output = run()
    assert "a long chosen passphrase" not in output
    assert log_in("boss", "a long chosen passphrase") is not None
    assert get_user_model().objects.get(username="boss").email == "boss@desk.test"


def test_nothing_is_created_when_an_admin_exists(admin_user) -> None:
    output = run()
    assert "existing admin (e.g. admin)" in output
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
