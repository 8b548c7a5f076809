"""Many mailboxes on one machine (issue 15): re-polls spread across the interval, a mailbox
queued once, the most overdue first, bounded passes that let the others through, new-mail
passes before routine polls (real Redis, a real Celery worker, a real Dovecot), and mailidle's
open-file limit."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.models import MailboxState, WorkerHeartbeat
from mailworker.pipeline.passes import run_pass
from mailworker.scheduling import (
    PUSH_QUEUE,
    due_integration_ids,
    next_poll_at,
    poll_integration_now,
    poll_phase,
)
from mailworker.status import state_of
from mailworker.tasks import dispatch_due_polls
from records.models import ServiceRecord
from tests.conftest import PROJECT_ROOT, incoming_imap
from tests.dovecot import Dovecot
from tests.mail import make_email
from tests.workers import Workers, wait_until


def emails(count: int, prefix: str) -> list[bytes]:
    """From different senders: the flood limit is not what this is about."""
    return [
        make_email(sender=f"user{n}@customer.test", subject=f"{prefix}{n}") for n in range(count)
    ]


def polled(integration: EmailIntegration, *, seconds_ago: float, **state: object) -> None:
    MailboxState.objects.update_or_create(
        integration=integration,
        defaults={"last_polled_at": timezone.now() - timedelta(seconds=seconds_ago), **state},
    )
    integration.refresh_from_db()


def test_a_thousand_mailboxes_polled_at_once_fall_due_spread_across_the_interval() -> None:
    interval = 60.0
    phases = [poll_phase(integration_id, interval) for integration_id in range(1, 1001)]
    per_second = Counter(int(phase) for phase in phases)
    # 1,000 passes in 60 s: about 17 a second, none of the seconds much busier than that.
    assert len(per_second) == 60
    assert max(per_second.values()) <= 20
    assert all(0 <= phase < interval for phase in phases)


@pytest.mark.django_db
def test_each_mailbox_keeps_its_phase_one_interval_apart(make_integration) -> None:
    integration = make_integration(**incoming_imap(poll_interval_seconds=60))
    polled(integration, seconds_ago=0)
    first = next_poll_at(integration)
    assert first is not None
    # Never sooner than half an interval after the last pass, never later than one and a half.
    last = state_of(integration).last_polled_at
    assert last + timedelta(seconds=30) <= first < last + timedelta(seconds=90)
    assert first.timestamp() % 60 == pytest.approx(poll_phase(integration.pk, 60), abs=1e-3)
    # A pass that ends on time (a second after its slot) is next due one interval later.
    MailboxState.objects.filter(integration=integration).update(
        last_polled_at=first + timedelta(seconds=1)
    )
    integration.refresh_from_db()
    assert next_poll_at(integration) == first + timedelta(seconds=60)


@pytest.mark.django_db
def test_a_queued_pass_is_not_queued_again_until_it_ends(
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    integration = dovecot_integration()
    polled(integration, seconds_ago=3600)

    assert integration.pk in due_integration_ids()
    assert dispatch_due_polls() == 1
    # Beat's next dispatches find it queued: no second, third ... pass for one mailbox.
    assert integration.pk not in due_integration_ids()
    assert dispatch_due_polls() == 0

    # The pass ends (as the worker runs it): no longer queued, due again at its next time.
    poll_integration_now(integration_id=integration.pk)
    integration.refresh_from_db()
    assert state_of(integration).pass_queued_at is None
    assert integration.pk not in due_integration_ids()
    polled(integration, seconds_ago=3600)
    assert integration.pk in due_integration_ids()


@pytest.mark.django_db
def test_a_pass_queued_long_ago_and_lost_is_queued_again(make_integration, settings) -> None:
    settings.POLL_QUEUED_STALE_SECONDS = 600
    integration = make_integration(**incoming_imap(poll_interval_seconds=60))
    polled(integration, seconds_ago=3600, pass_queued_at=timezone.now() - timedelta(seconds=599))
    assert integration.pk not in due_integration_ids()
    polled(integration, seconds_ago=3600, pass_queued_at=timezone.now() - timedelta(seconds=601))
    assert integration.pk in due_integration_ids()


@pytest.mark.django_db
def test_dispatch_queues_the_most_overdue_first(make_integration) -> None:
    integrations = [
        make_integration(**incoming_imap(name=f"M{n}", poll_interval_seconds=60)) for n in range(4)
    ]
    for integration, seconds_ago in zip(integrations, (200, 900, 400, 3000), strict=True):
        polled(integration, seconds_ago=seconds_ago)
    by_overdue = sorted(integrations, key=next_poll_at)
    assert due_integration_ids() == [integration.pk for integration in by_overdue]
    assert by_overdue[0] == integrations[3]


@pytest.mark.django_db
def test_a_pass_stops_at_its_budget_with_the_rest_left_for_its_continuation(
    settings, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    settings.PASS_MAX_EMAILS = 10
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, emails(25, "B"))

    report = poll_integration_now(integration_id=integration.pk)

    assert report.more and report.counts["created"] == 10
    assert dovecot.count(integration.incoming_username) == 15
    integration.refresh_from_db()
    # Its continuation is about to be queued: dispatch must not queue another pass.
    assert state_of(integration).pass_queued_at is not None
    assert integration.pk not in due_integration_ids()

    reports = [poll_integration_now(integration_id=integration.pk) for _ in range(2)]
    assert [each.more for each in reports] == [True, False]
    assert ServiceRecord.objects.count() == 25
    assert dovecot.count(integration.incoming_username) == 0
    integration.refresh_from_db()
    assert state_of(integration).pass_queued_at is None


@pytest.mark.django_db
def test_fetchmail_passes_are_not_bounded(
    settings, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    settings.PASS_MAX_EMAILS = 10
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, emails(25, "F"))
    report = run_pass(integration=integration)
    assert not report.more and report.counts["created"] == 25


@pytest.mark.django_db
def test_a_pass_that_finds_nothing_new_reads_no_filters_or_lookups(
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    integration = dovecot_integration()
    run_pass(integration=integration)  # the state row, the statuses: created once
    with CaptureQueriesContext(connection) as queries:
        report = run_pass(integration=integration)
    assert not report.failed and report.fetched == 0
    # Its state written (UPDATE), the success noted: nothing else.
    assert len(queries) <= 4, [query["sql"][:120] for query in queries]


@pytest.mark.django_db
def test_a_pass_costs_as_many_queries_with_a_hundred_other_mailboxes_as_with_none(
    dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration], make_integration
) -> None:
    """What a pass reads of the other integrations (the desk's own addresses, for the loop
    guard and the outbox) is one query whatever their number: a deferred field read per
    integration made a pass at a thousand mailboxes cost a thousand queries."""

    def queries_of_a_pass(prefix: str) -> int:
        integration = dovecot_integration()
        dovecot.deliver(integration.incoming_username, emails(3, prefix))
        with CaptureQueriesContext(connection) as queries:
            report = run_pass(integration=integration)
        assert report.counts["created"] == 3, report.summary()
        return len(queries)

    alone = queries_of_a_pass("Alone ")
    for n in range(100):
        make_integration(**incoming_imap(name=f"Other {n}", incoming_username=f"o{n}@desk.test"))
    # The same senders again: the same users, lookups and writes as the first pass.
    beside_a_hundred = queries_of_a_pass("Beside ")

    assert beside_a_hundred <= alone + 2, (alone, beside_a_hundred)


@pytest.mark.django_db(transaction=True)
def test_passes_for_new_mail_are_taken_before_routine_polls(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    routine = [dovecot_integration(use_idle=False) for _ in range(4)]
    pushed = [dovecot_integration(use_idle=False) for _ in range(2)]
    for integration in routine + pushed:
        dovecot.deliver(integration.incoming_username, make_email(subject=integration.name))
    # Queued while no worker runs: four routine polls first, then two passes for new mail.
    for integration in routine:
        workers.send("mailworker.tasks.poll_integration", integration.pk)
    for integration in pushed:
        workers.send(
            "mailworker.tasks.poll_integration",
            integration.pk,
            queue=PUSH_QUEUE,
            retry_if_busy=True,
        )

    worker = workers.celery_worker()
    worker.start()
    wait_until(
        lambda: ServiceRecord.objects.count() == 6, timeout=60, message=worker.output()[-3000:]
    )

    order = list(ServiceRecord.objects.order_by("pk").values_list("title", flat=True))
    assert sorted(order[:2]) == sorted(integration.name for integration in pushed), order


@pytest.mark.django_db(transaction=True)
def test_dispatch_and_heartbeat_are_taken_before_a_backlog_of_routine_passes(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    """Beat's tasks, sent by name as beat sends them (the routes choose their queue), behind
    four routine passes queued while no worker ran: the heartbeat is recorded before the
    passes' records exist."""
    routine = [dovecot_integration(use_idle=False) for _ in range(4)]
    for integration in routine:
        dovecot.deliver(integration.incoming_username, make_email(subject=integration.name))
        workers.send("mailworker.tasks.poll_integration", integration.pk)
    workers.send("mailworker.tasks.dispatch_due_polls")  # routed as beat's would be
    workers.send("mailworker.tasks.record_heartbeat")

    worker = workers.celery_worker()
    worker.start()
    wait_until(
        lambda: ServiceRecord.objects.count() == 4, timeout=60, message=worker.output()[-3000:]
    )

    heartbeat = WorkerHeartbeat.objects.get()
    first_record = ServiceRecord.objects.order_by("created_at").first()
    assert heartbeat.beat_at < first_record.created_at, worker.output()[-3000:]


def test_mailidle_raises_its_open_file_limit_and_says_when_the_hard_limit_is_too_low() -> None:
    script = (
        "import resource, django, os\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'servicedesk.settings')\n"
        "django.setup()\n"
        "from mailworker.idle import raise_open_file_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 600))\n"
        "print(raise_open_file_limit(100))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "print(raise_open_file_limit(1000))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    enough, raised, too_few = result.stdout.strip().splitlines()[-3:]
    assert raised == "600"
    assert enough == "open-file limit 600 (room for about 536 IDLE connections)"
    assert "room for about 536 IDLE connections, but 1000 integrations use push" in too_few
    assert "Raise the hard limit" in too_few
