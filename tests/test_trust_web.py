"""Web and files, tried as an attacker would: guessing passwords at the login pages, injecting
script into a page, reading the desk's files as another user of the machine, and asking
/healthz what the desk runs on.

Real components only: Django's login views with django-axes' database handler, `manage.py`
and `ingest_email` in subprocesses with their own DATA_DIR, Celery beat, and Debian's chromium
reporting Content-Security-Policy violations.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from mailworker.services import record_worker_heartbeat
from servicedesk.configuration import client_address_source, lockout_parameters
from servicedesk.csp import oauth_sign_in_origins
from tests.conftest import ADMIN_PASSWORD, PROJECT_ROOT, incoming_imap

WRONG_PASSWORD = "not the password"
ATTACKER = "203.0.113.66"
ALICE_ELSEWHERE = "198.51.100.7"
PROXY = "10.0.0.2"


def log_in(client: Client, username: str, password: str, *, path: str = "/login/", **extra):
    return client.post(path, {"username": username, "password": password}, **extra)


def fail_logins(client: Client, username: str, times: int, **extra) -> list[Any]:
    return [log_in(client, username, WRONG_PASSWORD, **extra) for _ in range(times)]


# Login throttling -----------------------------------------------------------------------


@pytest.mark.django_db
def test_five_wrong_passwords_lock_that_username_from_that_address(admin_user) -> None:
    attacker = Client(REMOTE_ADDR=ATTACKER)
    responses = fail_logins(attacker, admin_user.username, 5)

    assert [r.status_code for r in responses[:4]] == [200] * 4
    assert "Your username and password didn" in responses[0].text
    locked = responses[4]
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.text
    # It says when to try again: the cool-off (15 minutes) after the last failure.
    ends_at = timezone.localtime(AccessAttempt.objects.get().attempt_time + timedelta(minutes=15))
    assert f'Try again after <time datetime="{ends_at.isoformat()}"' in locked.text
    assert "in about 15 minutes" in locked.text

    # Now even the right password is refused from there, without being compared.
    right = log_in(attacker, admin_user.username, ADMIN_PASSWORD)
    assert right.status_code == 429 and "_auth_user_id" not in attacker.session
    # ... and those refused tries do not push the end of the lockout further.
    assert AccessAttempt.objects.get().failures_since_start == 5


@pytest.mark.django_db
def test_the_attacker_cannot_lock_the_user_out_from_elsewhere(admin_user, make_staff) -> None:
    fail_logins(Client(REMOTE_ADDR=ATTACKER), admin_user.username, 6)

    alice = Client(REMOTE_ADDR=ALICE_ELSEWHERE)
    response = log_in(alice, admin_user.username, ADMIN_PASSWORD)
    assert response.status_code == 302
    assert alice.session["_auth_user_id"] == str(admin_user.pk)
    # Another username from the attacker's address is not locked either.
    other = make_staff("bob")
    assert log_in(Client(REMOTE_ADDR=ATTACKER), other.username, ADMIN_PASSWORD).status_code == 302


@pytest.mark.django_db
def test_the_lockout_ends_after_the_cool_off(admin_user) -> None:
    attacker = Client(REMOTE_ADDR=ATTACKER)
    fail_logins(attacker, admin_user.username, 5)
    # Sixteen minutes pass (the failures are dated by the database handler).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert log_in(attacker, admin_user.username, ADMIN_PASSWORD).status_code == 302


@pytest.mark.django_db
def test_an_admin_lifts_a_lockout_at_once(admin_user) -> None:
    client = Client(REMOTE_ADDR=ATTACKER)
    fail_logins(client, admin_user.username, 5)
    assert log_in(client, admin_user.username, ADMIN_PASSWORD).status_code == 429

    call_command("axes_reset_username", admin_user.username)

    assert log_in(client, admin_user.username, ADMIN_PASSWORD).status_code == 302


@pytest.mark.django_db
def test_a_successful_login_forgets_earlier_mistakes(admin_user) -> None:
    client = Client(REMOTE_ADDR=ALICE_ELSEWHERE)
    fail_logins(client, admin_user.username, 4)
    assert log_in(client, admin_user.username, ADMIN_PASSWORD).status_code == 302
    client.logout()
    # Four more typos after a good login do not lock: the count started again.
    assert [r.status_code for r in fail_logins(client, admin_user.username, 4)] == [200] * 4


@pytest.mark.django_db
def test_the_admin_site_login_is_throttled_too(admin_user) -> None:
    attacker = Client(REMOTE_ADDR=ATTACKER)
    responses = fail_logins(attacker, admin_user.username, 5, path="/admin/login/")
    assert responses[-1].status_code == 429
    assert "Too many failed logins" in responses[-1].text
    # One count for both doors: the desk's login is locked for that username and address too.
    assert log_in(attacker, admin_user.username, ADMIN_PASSWORD).status_code == 429


@pytest.mark.django_db
def test_without_a_trusted_proxy_a_forged_forwarded_for_changes_nothing(admin_user) -> None:
    attacker = Client(REMOTE_ADDR=ATTACKER)
    for n in range(5):
        log_in(attacker, admin_user.username, WRONG_PASSWORD, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    response = log_in(
        attacker, admin_user.username, ADMIN_PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.99"
    )
    assert response.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


@pytest.fixture
def behind_one_proxy(settings) -> None:
    """TRUSTED_PROXY_COUNT=1: nginx in front, appending the address it saw."""
    source = client_address_source(1)
    settings.AXES_IPWARE_META_PRECEDENCE_ORDER = source.headers
    settings.AXES_IPWARE_PROXY_COUNT = source.listed_proxies


@pytest.mark.django_db
def test_behind_a_proxy_each_client_counts_by_its_own_address(admin_user, behind_one_proxy) -> None:
    # Every request comes from the proxy; the attacker writes a new address into
    # X-Forwarded-For each time, and the proxy appends the real one.
    via_proxy = Client(REMOTE_ADDR=PROXY)
    for n in range(5):
        log_in(
            via_proxy,
            admin_user.username,
            WRONG_PASSWORD,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, {ATTACKER}",
        )
    again = log_in(via_proxy, admin_user.username, ADMIN_PASSWORD, HTTP_X_FORWARDED_FOR=ATTACKER)
    assert again.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}

    # Alice, through the same proxy from her own address, is not locked out.
    alice = Client(REMOTE_ADDR=PROXY)
    response = log_in(
        alice, admin_user.username, ADMIN_PASSWORD, HTTP_X_FORWARDED_FOR=ALICE_ELSEWHERE
    )
    assert response.status_code == 302


def test_lockout_settings_are_read_and_refused_clearly() -> None:
    assert lockout_parameters("username+ip") == [["username", "ip_address"]]
    assert lockout_parameters("username+ip, ip") == [["username", "ip_address"], "ip_address"]
    with pytest.raises(Exception, match="LOGIN_LOCKOUT_BY='user' is not understood"):
        lockout_parameters("user")
    with pytest.raises(Exception, match="TRUSTED_PROXY_COUNT=-1"):
        client_address_source(-1)


# Security headers -----------------------------------------------------------------------


def csp_directives(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(
        (part.strip().split(" ", 1) + [""])[:2] for part in header.split(";") if part.strip()
    )


@pytest.fixture
def record_with_html_email(make_integration):
    from mailworker.pipeline.process import process_raw

    integration = make_integration(**incoming_imap())
    result = process_raw(
        integration=integration, raw=html_email(), desk_addresses=frozenset({"support@desk.test"})
    )
    from records.models import ServiceRecord

    assert result.record_id is not None, result
    return ServiceRecord.objects.get(pk=result.record_id)


@pytest.mark.django_db
def test_every_page_carries_the_policy_and_the_security_headers(
    admin_user, record_with_html_email
) -> None:
    client = Client()
    pages = ["/login/", "/healthz"]
    client.force_login(admin_user)
    pages += [
        "/records/",
        f"/records/{record_with_html_email.pk}/",
        "/settings/email/",
        "/settings/email/new/",
        "/quarantine/",
        "/admin/",
        "/admin/records/user/",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code in (200, 503), (path, response.status_code)
        policy = csp_directives(response)
        assert policy["default-src"] == "'self'", path
        assert policy["script-src"] == "'self'", path
        assert policy["object-src"] == "'none'", path
        assert policy["base-uri"] == "'none'", path
        # Forms post to the desk; Connect's redirect goes on to the OAuth sign-in page.
        assert policy["form-action"].split() == ["'self'", *oauth_sign_in_origins()], path
        assert policy["frame-ancestors"] == "'none'", path
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["Referrer-Policy"] == "same-origin", path
        assert response["X-Frame-Options"] == "DENY", path
        if path == f"/records/{record_with_html_email.pk}/":
            # Email HTML keeps its (sanitised) style attributes and embedded images there.
            assert policy["style-src-attr"] == "'unsafe-inline'"
            assert policy["img-src"] == "'self' data:"
        else:
            assert "unsafe-inline" not in response["Content-Security-Policy"], path


@pytest.mark.django_db
def test_form_targets_are_the_desk_and_the_oauth_sign_in_pages_only(settings) -> None:
    assert oauth_sign_in_origins() == [
        "https://accounts.google.com",
        "https://login.microsoftonline.com",
    ]
    settings.OAUTH_MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.us/"
    assert "https://login.microsoftonline.us" in oauth_sign_in_origins()


@pytest.mark.django_db
def test_the_pages_carry_no_inline_script(admin_user, record_with_html_email) -> None:
    """What the policy would refuse is not in the pages either (the browser test below
    checks that the browser reports nothing)."""
    import re

    client = Client()
    client.force_login(admin_user)
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
    handler = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
    for path in ["/records/", f"/records/{record_with_html_email.pk}/", "/settings/email/"]:
        text = client.get(path).text
        assert not inline_script.search(text), path
        assert not handler.search(text), path
        assert "javascript:" not in text.lower(), path


# Files ----------------------------------------------------------------------------------


def run_manage(data_dir: Path, *args: str, stdin: bytes | None = None) -> None:
    """A `manage.py` command as ops run it, from a shell whose umask is the usual 022."""
    env = {
        "PATH": os.environ["PATH"],
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": "",
        "CELERY_BROKER_URL": "",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=180,
        preexec_fn=lambda: os.umask(0o022),  # the shell's usual umask
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]


def readable_by_others(root: Path) -> list[str]:
    return [
        f"{oct(stat.S_IMODE(path.lstat().st_mode))} {path}"
        for path in [root, *root.rglob("*")]
        if not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


def test_the_desk_s_files_are_for_its_own_user_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_manage(data_dir, "migrate", "--noinput")
    create = (
        "from integrations.models import EmailIntegration as E;"
        "from integrations.services import Secrets, save_integration as s;"
        "s(integration=E(name='Support', incoming_enabled=True, incoming_protocol='imap',"
        "incoming_server='127.0.0.1', incoming_username='support@desk.test'),"
        "secrets=Secrets(incoming_password='x', smtp_password=None))"
    )
    run_manage(data_dir, "shell", "-c", create)
    # An email with an attachment, delivered the way a mail server pipes one in.
    run_manage(data_dir, "ingest_email", "--integration", "Support", stdin=html_email())
    # A task queued into the filesystem broker, as the web and the passes queue them.
    run_manage(
        data_dir, "shell", "-c", "from mailworker.tasks import record_heartbeat as t; t.delay()"
    )

    attachments = list((data_dir / "media").rglob("*logo.png"))
    assert attachments, sorted(str(p) for p in data_dir.rglob("*"))
    assert (data_dir / "servicedesk.sqlite3").exists()
    assert (data_dir / "secret_key").exists()
    assert list((data_dir / "broker" / "queue").iterdir()), "no task was queued"
    assert readable_by_others(data_dir) == []


def test_beat_s_schedule_is_for_its_own_user_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_manage(data_dir, "migrate", "--noinput")
    schedule = data_dir / "celerybeat-schedule"
    log = (tmp_path / "beat.log").open("w")
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "servicedesk", "beat", "--loglevel=INFO"],
        cwd=PROJECT_ROOT,
        env={
            "PATH": os.environ["PATH"],
            "DATA_DIR": str(data_dir),
            "CELERY_BROKER_URL": "",
            "HEARTBEAT_INTERVAL_SECONDS": "1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Sending due task" not in log_text(tmp_path):
            time.sleep(0.2)
        assert "Sending due task" in log_text(tmp_path), log_text(tmp_path)[-3000:]
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=30)
        log.close()
    assert list(data_dir.glob("celerybeat-schedule*")), sorted(data_dir.iterdir())
    assert readable_by_others(data_dir) == []
    assert schedule.parent == data_dir


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "beat.log").read_text()


def test_an_existing_data_dir_open_to_others_is_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    run_manage(data_dir, "check")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


@pytest.mark.django_db
def test_an_attachment_saved_by_the_web_or_a_test_process_is_private(
    settings, tmp_path: Path, record_with_html_email
) -> None:
    """Whatever the umask of the process that saves it (FILE_UPLOAD_PERMISSIONS)."""
    media = Path(settings.MEDIA_ROOT)
    files = [p for p in media.rglob("*") if p.is_file()]
    assert files
    for path in [*files, *(p for p in media.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


# /healthz -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "extra",
    [
        {"REMOTE_ADDR": ATTACKER},
        # From a proxy on this machine: the request came from elsewhere.
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": ATTACKER},
        {"REMOTE_ADDR": "::1", "HTTP_X_REAL_IP": ATTACKER},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": f"for={ATTACKER}"},
    ],
)
def test_anonymous_callers_from_elsewhere_learn_only_the_status(extra) -> None:
    unhealthy = Client().get("/healthz", **extra)
    assert unhealthy.status_code == 503
    assert unhealthy.json() == {"status": "unhealthy"}

    record_worker_heartbeat(hostname="worker@test")
    healthy = Client().get("/healthz", **extra)
    assert healthy.status_code == 200
    assert healthy.json() == {"status": "ok"}


@pytest.mark.django_db
def test_staff_and_direct_loopback_callers_see_the_details(admin_user, end_user) -> None:
    record_worker_heartbeat(hostname="worker@test")
    staff = Client(REMOTE_ADDR=ATTACKER)
    staff.force_login(admin_user)
    for response in (staff.get("/healthz"), Client(REMOTE_ADDR="::1").get("/healthz")):
        assert response.status_code == 200
        body = response.json()
        assert body["database"]["detail"] in ("sqlite", "postgresql")
        assert set(body) == {"status", "database", "broker", "worker", "polling"}

    # A logged-in end user is not staff: status only.
    user = Client(REMOTE_ADDR=ATTACKER)
    user.force_login(end_user)
    assert user.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_loopback_details_can_be_turned_off(settings) -> None:
    settings.HEALTHZ_DETAILS_FROM_LOOPBACK = False
    record_worker_heartbeat(hostname="worker@test")
    assert Client(REMOTE_ADDR="127.0.0.1").get("/healthz").json() == {"status": "ok"}


# In the browser: no Content-Security-Policy violation, and what script did still works ----

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# Reports every violation to the console, where the test collects it. Init scripts are run
# by the browser itself, not by the page, so the policy does not stop this one.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


def html_email() -> bytes:
    """An HTML email with a styled paragraph, a cid: image and a data: image."""
    message = EmailMessage()
    message["From"] = "Jane Doe <jane@customer.test>"
    message["To"] = "support@desk.test"
    message["Subject"] = "Screenshot of the error"
    message["Message-ID"] = "<html-1@customer.test>"
    message.set_content("See the screenshot.")
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    message.add_alternative(
        '<p style="color: rgb(200, 0, 0)">The red warning</p>'
        '<p><img src="cid:logo@customer.test" alt="logo" width="20" height="20">'
        f'<img src="{data_url}" alt="embedded" width="20" height="20"></p>',
        subtype="html",
    )
    message.get_payload()[1].add_related(
        PNG, maintype="image", subtype="png", cid="<logo@customer.test>", filename="logo.png"
    )
    return message.as_bytes(policy=SMTP)


@pytest.fixture
def violations(admin_page) -> Iterator[list[str]]:
    found: list[str] = []
    admin_page.context.add_init_script(REPORT_VIOLATIONS)
    admin_page.on(
        "console",
        lambda message: (
            found.append(message.text)
            if "Content Security Policy" in message.text or "CSP violation" in message.text
            else None
        ),
    )
    yield found


def visit(page, path: str) -> None:
    response = page.goto(path)
    assert response is not None and response.status in (200, 503), (path, response)
    page.wait_for_load_state("load")


@pytest.mark.browser
def test_the_pages_run_with_no_policy_violation(
    admin_page, violations, record_with_html_email, make_integration, admin_user
) -> None:
    from playwright.sync_api import expect

    from mailworker.pipeline.process import marker_key
    from records.models import ProcessedEmail, Quarantine
    from tests.conftest import free_port

    page = admin_page
    integration = make_integration(
        name="Both ways",
        incoming_enabled=True,
        incoming_protocol="imap",
        incoming_server="127.0.0.1",
        incoming_port=free_port(),
        incoming_encryption="none",
        incoming_username="support@desk.test",
        outgoing_enabled=True,
        email_address="support@desk.test",
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        smtp_encryption="none",
    )
    raw = b"From: x@y.test\r\nSubject: held\r\n\r\nbody\r\n"
    ProcessedEmail.objects.create(
        integration=integration, key=marker_key(raw), outcome="quarantined"
    )
    entry = Quarantine.objects.create(
        integration=integration, raw_email=raw, reason="test", from_address="x@y.test"
    )

    # Records: the list, and the record whose email HTML keeps its style and images.
    visit(page, "/records/")
    visit(page, f"/records/{record_with_html_email.pk}/")
    body = page.locator(".html-body")
    red = body.get_by_text("The red warning")
    assert red.evaluate("e => getComputedStyle(e).color") == "rgb(200, 0, 0)"
    for alt in ("logo", "embedded"):
        image = body.get_by_alt_text(alt)
        expect(image).to_be_visible()
        assert image.evaluate("img => img.complete && img.naturalWidth") == 1, alt

    # Settings > Email: the list, the form with its toggles, and a Test button.
    visit(page, "/settings/email/")
    visit(page, f"/settings/email/{integration.pk}/")
    incoming = page.locator("#incoming-fields")
    expect(incoming).to_be_visible()
    page.locator("#incoming-section legend input[type=checkbox]").uncheck()
    expect(incoming).to_be_hidden()
    page.locator("#incoming-section legend input[type=checkbox]").check()
    expect(incoming).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#incoming-test-outcome")).to_contain_text("Test failed")

    # Quarantine: the confirmation that was an inline onsubmit still asks first.
    visit(page, "/quarantine/")
    visit(page, f"/quarantine/{entry.pk}/")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Delete").click()
    assert asked == ["Delete this email for good?"]
    assert Quarantine.objects.filter(pk=entry.pk).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/quarantine/")
    assert not Quarantine.objects.filter(pk=entry.pk).exists()

    # The Django admin runs under the same policy.
    visit(page, "/admin/")
    visit(page, f"/admin/records/user/{admin_user.pk}/change/")
    expect(page.locator("#id_username")).to_have_value(admin_user.username)

    assert violations == []


@pytest.mark.browser
def test_injected_inline_script_does_not_run(
    admin_page, violations, record_with_html_email
) -> None:
    """The attack the policy exists for: markup that slipped into a page cannot run script.
    (Also proves the violation detector of the test above reports what it should.)"""
    page = admin_page
    visit(page, f"/records/{record_with_html_email.pk}/")
    page.evaluate(
        """() => {
          document.body.insertAdjacentHTML("beforeend",
            '<img src="/static/missing.png" onerror="window.ran = 1">');
          const script = document.createElement("script");
          script.textContent = "window.ran = 2";
          document.body.append(script);
        }"""
    )
    deadline = time.monotonic() + 10
    while len(violations) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets Playwright deliver the console events
    assert page.evaluate("() => window.ran") is None
    assert any("script-src-attr" in text for text in violations), violations
    assert any("script-src-elem" in text for text in violations), violations


def test_compose_from_the_example_trusts_one_proxy_and_listens_on_loopback(
    tmp_path: Path,
) -> None:
    """The production example: the TLS proxy's X-Forwarded-For counts for login throttling,
    and the web's port is published on the host's loopback only, so nobody can go around the
    proxy and write that header themselves."""
    from tests.test_docker_compose import run_config

    example = (PROJECT_ROOT / ".env.example").read_text()
    filled = example.replace("SECRET_KEY=\n", "SECRET_KEY=" + "s" * 60 + "\n").replace(
        "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pg-secret\n"
    )
    result = run_config(tmp_path, filled)
    assert result.returncode == 0, result.stderr
    web = json.loads(result.stdout)["services"]["web"]
    assert web["environment"]["TRUSTED_PROXY_COUNT"] == "1"
    assert web["environment"]["LOGIN_FAILURE_LIMIT"] == "5"
    assert [(port["host_ip"], port["target"]) for port in web["ports"]] == [("127.0.0.1", 8000)]
