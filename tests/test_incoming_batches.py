"""A pass commits its emails a chunk at a time (one transaction, written together; a
savepoint per email only when one fails) and acks each chunk only after its commit, shown on
a real Dovecot."""

from __future__ import annotations

import multiprocessing

import pytest
from django.db import OperationalError

from mailworker.models import OutboxEmail
from mailworker.pipeline import apply as apply_module
from mailworker.pipeline import parse_ahead
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


def test_what_a_failing_email_queued_is_rolled_back_and_the_rest_of_its_chunk_goes_on(
    dovecot, dovecot_integration, monkeypatch
):
    """The chunk reads its senders' users and counts once and inserts its outbox rows at
    its end: an email that fails after it created its sender and queued their notification
    takes both back with it, and a later email from the same sender still gets them."""
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    senders = [f"person{n}@customer.test" for n in range(6)]
    raws = [make_email(sender=s, subject=f"Request {n}", body=s) for n, s in enumerate(senders)]
    raws.append(make_email(sender=senders[3], subject="Request 3 again", body="again"))
    dovecot.deliver(integration.incoming_username, raws)
    real_copy = apply_module.queue_copy_of_incoming

    def fail_after_notifying(ctx):  # runs after the record_created notifications
        if ctx.email.subject == "Request 3":
            raise ValueError("a bug after the notifications")
        return real_copy(ctx)

    monkeypatch.setattr(apply_module, "queue_copy_of_incoming", fail_after_notifying)

    report = run_pass(integration=integration)

    assert report.counts["created"] == 6 and report.counts["quarantined"] == 1
    assert not ServiceRecord.objects.filter(title="Request 3").exists()
    assert ServiceRecord.objects.get(title="Request 3 again").requester.email == senders[3]
    notified = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.NOTIFICATION)
    for sender in senders:
        assert notified.filter(to_addresses=[sender]).count() == 1, sender
    assert notified.filter(record__isnull=True).count() == 0


def test_the_same_text_twice_in_one_chunk_is_a_duplicate(dovecot, dovecot_integration):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(
        integration.incoming_username,
        [make_email(subject="Sent twice", body="Same text, other Message-ID") for _ in range(2)],
    )

    report = run_pass(integration=integration)

    assert report.counts["created"] == 1 and report.counts["duplicate"] == 1
    assert ServiceRecord.objects.count() == 1


@pytest.mark.parametrize("processes", [0, 1])
def test_an_email_the_parser_fails_on_is_quarantined_whole_with_the_traceback(
    dovecot, dovecot_integration, monkeypatch, settings, processes
):
    """Parsing runs in a second process (1) or in the pass's own (0): either way a parser
    failure quarantines the raw bytes with the traceback and the others are imported. (A
    batch's first chunk, 20 emails, is parsed in the pass's own process either way: the
    failing email comes after it.)"""
    settings.INGEST_PARSE_PROCESSES = processes
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    raws = [  # from different senders: the flood limit is not what this is about
        make_email(sender=f"person{n}@customer.test", subject=f"Request {n}", body=f"Body {n}")
        for n in range(30)
    ]
    dovecot.deliver(integration.incoming_username, raws)
    real_parse = parse_ahead.parse_email

    def parse_email(raw: bytes):
        if b"Subject: Request 25\r\n" in raw:
            if processes:  # the second process parses it
                assert multiprocessing.parent_process() is not None
            raise UnicodeError("the parser tripped")
        return real_parse(raw)

    # Set before the pass forks its parsing process, so the child has it too.
    monkeypatch.setattr(parse_ahead, "parse_email", parse_email)

    report = run_pass(integration=integration)

    assert report.counts["created"] == 29 and report.counts["quarantined"] == 1
    entry = Quarantine.objects.get()
    assert bytes(entry.raw_email) == raws[25]
    assert "UnicodeError: the parser tripped" in entry.reason
    assert "Traceback" in entry.reason
    assert dovecot.count(integration.incoming_username) == 0
