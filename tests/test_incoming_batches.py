"""A pass commits its emails a chunk at a time (one transaction, a savepoint per email) and
acks each chunk only after its commit, shown on a real Dovecot."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from mailworker.models import OutboxEmail
from mailworker.pipeline import apply as apply_module
from mailworker.pipeline import process as process_module
from mailworker.pipeline.passes import run_pass
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord
from tests.mail import make_email

pytestmark = pytest.mark.django_db


def _emails(count: int) -> list[bytes]:
    return [make_email(subject=f"Request {n}", body=f"Body {n}") for n in range(count)]


def _failing_open_record(monkeypatch, *, subject: str, error: Exception) -> None:
    real_open_record = apply_module.open_record

    def open_record(ctx, *, subject_=subject, **kwargs):
        if kwargs["subject"] == subject_:
            raise error
        return real_open_record(ctx, **kwargs)

    monkeypatch.setattr(apply_module, "open_record", open_record)


def test_a_failing_email_in_the_middle_of_a_chunk_is_quarantined_and_the_others_commit(
    dovecot, dovecot_integration, monkeypatch
):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    raws = _emails(10)
    dovecot.deliver(integration.incoming_username, raws)
    _failing_open_record(monkeypatch, subject="Request 4", error=ValueError("a bug"))

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == 9 and report.counts["quarantined"] == 1
    assert sorted(ServiceRecord.objects.values_list("title", flat=True)) == sorted(
        f"Request {n}" for n in range(10) if n != 4
    )
    entry = Quarantine.objects.get()
    assert bytes(entry.raw_email) == raws[4]
    assert "a bug" in entry.reason
    # Nothing the failing email wrote before it failed survived its savepoint.
    assert not Message.objects.filter(subject="Request 4").exists()
    assert ProcessedEmail.objects.count() == 10
    assert dovecot.count(integration.incoming_username) == 0


def test_a_database_error_mid_chunk_acks_nothing_of_that_chunk(
    dovecot, dovecot_integration, monkeypatch
):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(integration.incoming_username, _emails(10))
    monkeypatch.setattr(process_module, "CHUNK_MAX_EMAILS", 4)
    _failing_open_record(
        monkeypatch, subject="Request 6", error=OperationalError("the database went away")
    )

    report = run_pass(integration=integration)

    assert report.failed and "OperationalError" in report.errors[0]
    # The first chunk (0-3) committed and was acked; the second (4-7) rolled back whole,
    # emails 4 and 5 included, and stays in the mailbox with the rest.
    assert sorted(ServiceRecord.objects.values_list("title", flat=True)) == [
        f"Request {n}" for n in range(4)
    ]
    assert not Quarantine.objects.exists()
    assert ProcessedEmail.objects.count() == 4
    assert dovecot.count(integration.incoming_username) == 6

    monkeypatch.undo()
    again = run_pass(integration=integration)
    assert not again.failed, again.errors
    assert again.counts["created"] == 6
    assert ServiceRecord.objects.count() == 10
    assert dovecot.count(integration.incoming_username) == 0


def test_the_same_email_twice_in_one_chunk_makes_one_record(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    raw = make_email(subject="Sent twice", body="The same bytes twice")
    dovecot.deliver(integration.incoming_username, [raw, raw])

    report = run_pass(integration=integration)

    assert report.counts["created"] == 1 and report.counts["already processed"] == 1
    assert ServiceRecord.objects.count() == 1
    assert dovecot.count(integration.incoming_username) == 0


def test_each_email_of_a_chunk_notifies_its_sender_once(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    senders = [f"person{n}@customer.test" for n in range(5)]
    dovecot.deliver(
        integration.incoming_username,
        [make_email(sender=s, subject=f"From {s}", body=s) for s in senders],
    )

    run_pass(integration=integration)

    notified = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.NOTIFICATION)
    for sender in senders:
        assert notified.filter(to_addresses=[sender]).count() == 1
