"""`make run` creates the first admin when there is none and says how to log in."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
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


# The first admin's email address, and where to log in --------------------------------------


class Terminal(io.StringIO):
    """What a person types at `make run`'s terminal."""

    def isatty(self) -> bool:
        return True


def run_at_terminal(typed: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_first_admin", stdin=Terminal(typed), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def no_superuser_environment(monkeypatch) -> None:
    for name in (
        "DJANGO_SUPERUSER_USERNAME",
        "DJANGO_SUPERUSER_PASSWORD",
        "DJANGO_SUPERUSER_EMAIL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_email_is_asked_for_at_a_terminal_until_it_is_an_address(
    no_superuser_environment,
) -> None:
    output, errors = run_at_terminal("not an address\n  boss@desk.test \n")
    assert output.count("Email address of the first admin") == 2
    assert "'not an address' is not an email address" in errors
    assert get_user_model().objects.get(username="admin").email == "boss@desk.test"
    assert "email: boss@desk.test" in output


def test_the_email_can_be_skipped_and_the_admin_is_warned(no_superuser_environment) -> None:
    output, _ = run_at_terminal("\n")
    assert get_user_model().objects.get(username="admin").email == ""
    assert "has no email address: alerts and admin notifications reach nobody" in output


def test_without_a_terminal_nothing_is_asked(no_superuser_environment) -> None:
    output = run()
    assert "Email address of the first admin" not in output
    assert get_user_model().objects.get(username="admin").email == ""


def test_an_invalid_email_in_the_environment_is_refused_with_how_to_fix_it(
    no_superuser_environment, monkeypatch
) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "boss-at-desk")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_EMAIL='boss-at-desk' is not an email"):
        run_at_terminal("ignored@desk.test\n")
    assert not get_user_model().objects.exists()


def test_the_environment_s_email_wins_over_the_terminal(
    no_superuser_environment, monkeypatch
) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@desk.test")
    output, _ = run_at_terminal("typed@desk.test\n")
    assert "Email address of the first admin" not in output
    assert get_user_model().objects.get(username="admin").email == "ops@desk.test"


@pytest.mark.parametrize(
    "bind, login",
    [
        ("127.0.0.1:8765", "http://127.0.0.1:8765/login/"),
        ("0.0.0.0:9000", "http://127.0.0.1:9000/login/"),
        ("[::1]:8001", "http://[::1]:8001/login/"),
        ("localhost", "http://localhost:8000/login/"),
    ],
)
def test_the_login_address_is_where_gunicorn_listens(
    no_superuser_environment, settings, bind: str, login: str
) -> None:
    settings.WEB_BIND = bind
    assert f"Log in at {login}" in run()
    assert f"Log in at {login}" in run()  # and again, to an existing admin


def test_make_run_s_banner_names_the_same_address(settings) -> None:
    settings.WEB_BIND = "127.0.0.1:8765"
    out = io.StringIO()
    call_command("web_address", stdout=out)
    assert out.getvalue().strip() == "http://127.0.0.1:8765/"
