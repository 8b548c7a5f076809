"""When mailboxes are read: each integration at its own interval, longer while it fails,
back by itself after a good pass; what ops see (/healthz, the list page, the pass log line);
and beat with a worker on Redis following changes without a restart."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.models import MailboxState
from mailworker.pipeline.passes import run_pass
from mailworker.scheduling import due_integration_ids, next_poll_at, poll_interval
from mailworker.services import record_worker_heartbeat
from mailworker.status import state_of
from records.models import ServiceRecord
from tests.conftest import incoming_imap
from tests.dovecot import Dovecot
from tests.mail import make_email
from tests.workers import Workers, wait_until


def polled(integration: EmailIntegration, *, seconds_ago: float, failures: int = 0) -> None:
    MailboxState.objects.update_or_create(
        integration=integration,
        defaults={
            "last_polled_at": timezone.now() - timedelta(seconds=seconds_ago),
            "poll_failures": failures,
        },
    )
    integration.refresh_from_db()


@pytest.mark.django_db
def test_each_integration_is_due_at_its_own_interval(make_integration) -> None:
    fast = make_integration(**incoming_imap(name="Fast", poll_interval_seconds=30))
    slow = make_integration(**incoming_imap(name="Slow", poll_interval_seconds=300))
    never = make_integration(**incoming_imap(name="Never polled"))
    disabled = make_integration(**incoming_imap(name="Disabled"))
    EmailIntegration.objects.filter(pk=disabled.pk).update(incoming_enabled=False)
    # Due at the mailbox's own phase of its interval, between half an interval and one and a
    # half after the last pass (see next_poll_at).
    polled(fast, seconds_ago=46)
    polled(slow, seconds_ago=46)

    assert sorted(due_integration_ids()) == sorted([fast.pk, never.pk])

    # A changed interval counts at the next dispatch: beat reads the integrations each time.
    EmailIntegration.objects.filter(pk=slow.pk).update(poll_interval_seconds=20)
    assert slow.pk in due_integration_ids()


@pytest.mark.django_db
def test_a_failing_integration_backs_off_and_returns_to_its_interval(make_integration) -> None:
    integration = make_integration(**incoming_imap(poll_interval_seconds=60))
    intervals = []
    for failures in range(0, 9):
        polled(integration, seconds_ago=0, failures=failures)
        intervals.append(poll_interval(integration).total_seconds())
    # One failure may be a blip; then the interval doubles, up to an hour.
    assert intervals == [60, 60, 120, 240, 480, 960, 1920, 3600, 3600]

    polled(integration, seconds_ago=200, failures=4)  # interval 480 s
    assert integration.pk not in due_integration_ids()
    assert next_poll_at(integration) > timezone.now()
    polled(integration, seconds_ago=721, failures=4)  # 1.5 intervals: due whatever its phase
    assert integration.pk in due_integration_ids()


@pytest.mark.django_db
def test_failed_passes_count_up_and_a_good_pass_resets_them(
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    integration = dovecot_integration()
    password = integration.incoming_password
    EmailIntegration.objects.filter(pk=integration.pk).update(incoming_password="wrong")
    integration.refresh_from_db()
    for _ in range(3):
        assert run_pass(integration=integration).failed
    integration.refresh_from_db()
    assert state_of(integration).poll_failures == 3
    assert poll_interval(integration) == timedelta(seconds=4 * integration.poll_interval_seconds)

    EmailIntegration.objects.filter(pk=integration.pk).update(incoming_password=password)
    integration.refresh_from_db()
    assert not run_pass(integration=integration).failed
    integration.refresh_from_db()
    state = state_of(integration)
    assert state.poll_failures == 0 and state.last_error == ""
    assert state.last_success_at is not None


@pytest.mark.django_db
def test_the_list_page_shows_the_last_success_and_the_back_off(
    client: Client, admin_user, make_integration
) -> None:
    integration = make_integration(**incoming_imap(name="Flaky"))
    last_success = timezone.now() - timedelta(hours=5)
    MailboxState.objects.create(
        integration=integration,
        last_success_at=last_success,
        last_polled_at=timezone.now(),
        last_error="imap.example.com:993 refused the connection",
        poll_failures=4,
        idle_status="reconnecting in 8 s: connection refused",
    )
    client.force_login(admin_user)

    page = client.get("/settings/email/").content.decode()

    assert timezone.localtime(last_success).strftime("%Y-%m-%d %H:%M") in page
    assert "refused the connection" in page
    assert "4 failed passes in a row: polling backs off until one succeeds." in page
    assert "Push: reconnecting in 8 s" in page


@pytest.mark.django_db
def test_healthz_reports_the_oldest_overdue_poll(
    client: Client, settings, make_integration
) -> None:
    settings.POLL_MAX_DELAY_SECONDS = 300
    record_worker_heartbeat(hostname="worker@test")
    on_time = make_integration(**incoming_imap(name="On time", poll_interval_seconds=60))
    late = make_integration(**incoming_imap(name="Late", poll_interval_seconds=60))
    polled(on_time, seconds_ago=30)
    polled(late, seconds_ago=60 + 100)

    overdue = (timezone.now() - next_poll_at(late)).total_seconds()
    assert next_poll_at(on_time) >= timezone.now() - timedelta(seconds=1)
    body = client.get("/healthz").json()
    assert body["polling"]["ok"] is True
    assert body["polling"]["oldest_overdue_integration"] == "Late"
    assert overdue - 1 <= body["polling"]["oldest_overdue_seconds"] <= overdue + 10
    assert body["status"] == "ok"

    polled(late, seconds_ago=60 + 400)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["polling"]["ok"] is False


@pytest.mark.django_db
def test_each_pass_logs_one_line_with_its_counts_and_duration(
    caplog, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, [make_email(subject=f"L{n}") for n in range(3)])
    with caplog.at_level(logging.INFO, logger="mailworker.pipeline.passes"):
        run_pass(integration=integration)

    (line,) = [r for r in caplog.records if r.getMessage().startswith("mail pass ")]
    fields = line.mail_pass
    assert fields["integration_id"] == integration.pk
    assert (fields["status"], fields["fetched"], fields["created"]) == ("ok", 3, 3)
    assert fields["duration_ms"] >= 0
    assert f'integration="{integration.name}"' in line.getMessage()
    assert "fetched=3 created=3 appended=0" in line.getMessage()


@pytest.mark.django_db(transaction=True)
def test_beat_and_a_worker_poll_new_integrations_without_a_restart(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    first = dovecot_integration(poll_interval_seconds=10, use_idle=False)
    dovecot.deliver(first.incoming_username, make_email(subject="Beat one"))
    worker = workers.celery_worker(POLL_DISPATCH_SECONDS="1")
    worker.command.append("--beat")
    worker.command.append(f"--schedule={workers.directory / 'beat-schedule'}")
    worker.start()
    wait_until(lambda: ServiceRecord.objects.filter(title="Beat one").exists(), timeout=30)

    second = dovecot_integration(poll_interval_seconds=10, use_idle=False)
    dovecot.deliver(second.incoming_username, make_email(subject="Beat two"))

    wait_until(
        lambda: ServiceRecord.objects.filter(title="Beat two").exists(),
        timeout=30,
        message=worker.output()[-3000:],
    )
