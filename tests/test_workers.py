"""The mail engine's processes on real servers: Celery workers on Redis, the lock per
integration, SIGKILL in the middle of passes, and several passes at once on one mailbox.

Every test here starts real processes (`celery -A servicedesk worker`, `manage.py ...`)
against the test database, so the data they need is committed (transaction=True).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import run_pass
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord
from tests.dovecot import Dovecot
from tests.mail import make_email
from tests.workers import Workers, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

POLL = "mailworker.tasks.poll_integration"


def numbered_emails(count: int, prefix: str, *, start: int = 0) -> list[bytes]:
    """Ordinary mail from many people of many companies: no sender and no domain opens
    more records within the hour than the flood limit allows (20 and 100)."""
    return [
        make_email(
            sender=f"User {n} <user{n}@customer{n % 50}.test>",
            subject=f"{prefix} {n:04d}",
            body=f"Email number {n}.",
        )
        for n in range(start, start + count)
    ]


def assert_each_email_imported_once(prefix: str, count: int) -> None:
    """Exactly one record per email (each subject is unique and carries no record number),
    each with exactly one message, nothing quarantined, one processed marker per email."""
    subjects = Counter(
        ServiceRecord.objects.filter(title__startswith=prefix).values_list("title", flat=True)
    )
    expected = {f"{prefix} {n:04d}" for n in range(count)}
    assert set(subjects) == expected, f"missing: {sorted(expected - set(subjects))[:10]}"
    assert max(subjects.values()) == 1, f"doubled: {[s for s, n in subjects.items() if n > 1]}"
    messages = Message.objects.filter(record__title__startswith=prefix)
    assert messages.count() == count
    assert ProcessedEmail.objects.filter(outcome="created").count() == count
    assert not Quarantine.objects.exists()


def test_a_worker_runs_a_queued_pass(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, numbered_emails(3, "Queued"))
    worker = workers.celery_worker()
    worker.start()
    workers.send(POLL, integration.pk)
    wait_until(
        lambda: dovecot.count(integration.incoming_username) == 0,
        timeout=60,
        message=f"the worker did not empty the mailbox:\n{worker.output()[-3000:]}",
    )
    assert_each_email_imported_once("Queued", 3)
    # The pass logs its line when it has finished (after the acks and the logout).
    wait_until(
        lambda: "status=ok fetched=3 created=3" in worker.output(),
        timeout=30,
        message=f"no pass line in the worker's log:\n{worker.output()[-3000:]}",
    )
    assert "mail pass integration_id=" in worker.output()


def test_a_prefork_pool_child_parses_ahead_in_a_process_of_its_own(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    """Celery's pool children are daemonic, and multiprocessing refuses them children: the
    pass still parses the next chunk in a second process there, and imports everything."""
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, numbered_emails(250, "Prefork"))
    worker = workers.celery_worker(prefork=True)
    worker.start()
    workers.send(POLL, integration.pk)
    wait_until(
        lambda: dovecot.count(integration.incoming_username) == 0,
        timeout=120,
        message=f"the worker did not empty the mailbox:\n{worker.output()[-3000:]}",
    )
    # The pass's line comes after its last ack: stopping the worker before it would cut the
    # pass short (a loaded machine showed it).
    worker.wait_for_output("status=ok fetched=250 created=250", timeout=60)
    worker.stop()
    assert_each_email_imported_once("Prefork", 250)
    assert "parsing here" not in worker.output(), worker.output()[-3000:]


def _other_backends() -> set[int]:
    """PostgreSQL backends of this database other than the test's own connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in cursor.fetchall()}


def test_a_worker_keeps_its_database_connection_from_one_pass_to_the_next(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    """Celery's Django fixup closes the connections around every task unless told otherwise
    (CELERY_DB_REUSE_MAX): on PostgreSQL each pass then paid a new backend. Now the same
    backend serves the worker's passes while CONN_MAX_AGE allows."""
    integration = dovecot_integration()
    worker = workers.celery_worker()
    worker.start()
    backends = []
    for n in range(3):
        dovecot.deliver(integration.incoming_username, numbered_emails(1, f"Pass {n}"))
        workers.send(POLL, integration.pk)
        wait_until(
            lambda n=n: ServiceRecord.objects.filter(title__startswith=f"Pass {n}").exists(),
            timeout=60,
            message=f"pass {n} did not import its email:\n{worker.output()[-3000:]}",
        )
        worker.wait_for_output("status=ok fetched=1 created=1", timeout=30)
        worker.mark_output()
        if connection.vendor == "postgresql":
            backends.append(_other_backends())
    if connection.vendor == "postgresql":
        # The worker's backend outlived each pass, and it is the same one each time.
        assert backends[0] and backends[0] == backends[1] == backends[2], backends


def test_the_lock_keeps_a_second_pass_out_and_dies_with_its_holder(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, numbered_emails(2, "Locked"))
    holder = workers.manage(
        "lock-holder",
        "shell",
        "-c",
        "import time\n"
        "from mailworker.locks import integration_lock\n"
        f"with integration_lock({integration.pk}) as taken:\n"
        "    print('holding' if taken else 'not taken', flush=True)\n"
        "    time.sleep(600)\n",
        ready_text="holding",
    )
    holder.start()

    report = run_pass(integration=integration)

    assert report.skipped and not report.failed
    assert dovecot.count(integration.incoming_username) == 2
    assert not ServiceRecord.objects.exists()

    holder.kill()  # SIGKILL: no chance to release anything
    report = run_pass(integration=integration)

    assert not report.skipped and report.counts["created"] == 2
    assert dovecot.count(integration.incoming_username) == 0


@pytest.mark.parametrize("seed", [20261123, 7])
def test_sigkill_during_passes_loses_and_doubles_nothing(
    seed: int,
    workers: Workers,
    dovecot: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    """1,000 emails; the worker is killed with SIGKILL at a random moment of each of its
    passes and started again (as a container restart would), KILLS times; then one last
    pass runs to the end. Every email ends up imported exactly once. A fast machine may
    import everything before the sixth kill: then more emails arrive, as they would."""
    kills_wanted = 6
    total = 1000
    top_up = 250
    integration = dovecot_integration()
    username = integration.incoming_username
    dovecot.deliver(username, numbered_emails(total, "Crash"))
    moments = random.Random(seed)
    # A fast machine tops up many times before the sixth kill; past 5,000 emails from the
    # 50 domains of numbered_emails() the flood limit per domain would hold the rest, and
    # this test is about crashes, not floods.
    worker = workers.celery_worker(FLOOD_RECORDS_PER_DOMAIN_PER_HOUR="0")
    kills: list[tuple[float, int, int]] = []  # (seconds into the pass, imported, left)

    def mailbox_empty() -> bool:
        return dovecot.count(username) == 0

    while len(kills) < kills_wanted:
        if mailbox_empty():
            dovecot.deliver(username, numbered_emails(top_up, "Crash", start=total))
            total += top_up
        if not worker.running:  # it was not killed if the pass ended before the moment
            worker.start()
        worker.mark_output()
        workers.send(POLL, integration.pk)  # what beat's next dispatch would queue
        worker.wait_for_output("received")
        moment = moments.uniform(0.1, 3.0)
        try:
            wait_until(mailbox_empty, timeout=moment, interval=0.02)
        except pytest.fail.Exception:
            worker.kill()
            kills.append(
                (round(moment, 2), ProcessedEmail.objects.count(), dovecot.count(username))
            )
    if not mailbox_empty():
        worker.start()
        workers.send(POLL, integration.pk)
        wait_until(mailbox_empty, timeout=300, message=worker.output()[-3000:])
    wait_until(lambda: ProcessedEmail.objects.count() == total, timeout=60)
    worker.stop()
    print(
        f"\ncrash safety, seed {seed}: {len(kills)} kills (s into the pass, imported, left "
        f"in the mailbox): {kills}"
    )
    assert_each_email_imported_once("Crash", total)


def test_two_workers_and_a_manual_fetchmail_at_once_make_one_record_per_email(
    workers: Workers, dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    total = 500
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, numbered_emails(total, "Concurrent"))
    first, second = workers.celery_worker("first"), workers.celery_worker("second")
    first.start()
    second.start()
    manual = workers.manage("fetchmail", "fetchmail")

    workers.send(POLL, integration.pk)
    workers.send(POLL, integration.pk)
    manual.start()

    assert manual.process is not None
    manual.process.wait(timeout=120)
    wait_until(lambda: dovecot.count(integration.incoming_username) == 0, timeout=120)
    wait_until(lambda: ProcessedEmail.objects.count() == total, timeout=60)
    assert_each_email_imported_once("Concurrent", total)
    logs = first.output() + second.output() + manual.output()
    assert "status=skipped" in logs or "skipped, another pass" in logs
