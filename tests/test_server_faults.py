"""Servers that fail in the middle of the work: Dovecot stopped during a pass, the wire cut
during a FETCH, the SMTP server gone while the outbox drains. Afterwards every email is
imported once and every notification sent once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email import message_from_bytes

import pytest

from integrations.models import EmailIntegration
from mailworker.delivery import send_due
from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.pipeline.passes import run_pass
from records.models import ProcessedEmail
from records.services import create_record, get_or_create_end_user
from tests.dovecot import Dovecot
from tests.faults import CuttingProxy
from tests.smtpd import SmtpServer
from tests.test_workers import assert_each_email_imported_once, numbered_emails
from tests.workers import Workers, wait_until


@pytest.fixture
def restart_dovecot_afterwards(dovecot: Dovecot) -> Iterator[Dovecot]:
    yield dovecot
    dovecot.start()  # does nothing when it runs


@pytest.mark.django_db(transaction=True)
def test_dovecot_stopped_and_restarted_in_the_middle_of_a_pass(
    workers: Workers,
    restart_dovecot_afterwards: Dovecot,
    dovecot_integration: Callable[..., EmailIntegration],
) -> None:
    dovecot = restart_dovecot_afterwards
    total = 1000
    integration = dovecot_integration()
    dovecot.deliver(integration.incoming_username, numbered_emails(total, "Restart"))
    fetchmail = workers.manage("fetchmail", "fetchmail", "--batch-size", "100")
    fetchmail.start()
    wait_until(lambda: ProcessedEmail.objects.count() >= 150, timeout=120, interval=0.01)

    dovecot.crash()
    assert fetchmail.process is not None
    assert fetchmail.process.wait(timeout=120) == 1, fetchmail.output()
    imported_before = ProcessedEmail.objects.count()
    assert 150 <= imported_before < total
    dovecot.start()

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == total - imported_before
    assert dovecot.count(integration.incoming_username) == 0
    assert_each_email_imported_once("Restart", total)


@pytest.mark.django_db
def test_the_connection_cut_while_fetching_loses_and_doubles_nothing(
    dovecot: Dovecot, dovecot_integration: Callable[..., EmailIntegration]
) -> None:
    total = 300
    proxy = CuttingProxy(target_port=dovecot.port_for("imap", "ssl"), cut_after_bytes=250_000)
    proxy.start()
    try:
        integration = dovecot_integration(incoming_port=proxy.port)
        big = [raw + b"\r\n" + b"x" * 2000 + b"\r\n" for raw in numbered_emails(total, "Cut")]
        dovecot.deliver(integration.incoming_username, big)

        first = run_pass(integration=integration, batch_size=100)

        assert proxy.cuts == 1
        assert first.failed and first.fetched < total
        second = run_pass(integration=integration, batch_size=100)
    finally:
        proxy.stop()

    assert not second.failed, second.errors
    assert first.counts["created"] + second.counts["created"] == total
    assert dovecot.count(integration.incoming_username) == 0
    assert_each_email_imported_once("Cut", total)


@pytest.mark.django_db(transaction=True)
def test_the_smtp_server_stopping_while_the_outbox_drains(
    smtp_server: SmtpServer, smtp_integration: Callable[..., EmailIntegration]
) -> None:
    total = 300
    smtp_integration(encryption="tls")
    record = create_record(
        requester=get_or_create_end_user(email="jane@customer.test")[0],
        title="Outage",
        description="",
    )
    for n in range(total):
        queue_email(
            kind=OutboxEmail.Kind.NOTIFICATION,
            to=[f"user{n}@customer.test"],
            subject=f"Notification {n:04d}",
            text="Your record was updated.",
            record=record,
        )
    smtp_server.clear()
    stopped = threading.Event()

    def stop_after_100() -> None:
        while len(smtp_server.messages) < 100:
            time.sleep(0.001)
        smtp_server.stop()
        stopped.set()

    watcher = threading.Thread(target=stop_after_100, daemon=True)
    watcher.start()
    try:
        first = send_due()
        watcher.join(timeout=30)
        assert stopped.is_set()
        assert first.retrying > 0 and first.sent < total
        pending = OutboxEmail.objects.filter(state=OutboxEmail.State.PENDING)
        assert pending.count() == total - first.sent
    finally:
        smtp_server.start()

    # The back-off has passed (as beat's next runs would find).
    pending.update(next_attempt_at=None)
    second = send_due()

    assert first.sent + second.sent == total
    received = Counter(
        message_from_bytes(message.raw)["Subject"] for message in smtp_server.messages
    )
    assert set(received) == {f"Notification {n:04d}" for n in range(total)}
    assert max(received.values()) == 1
    assert OutboxEmail.objects.filter(state=OutboxEmail.State.SENT).count() == total
