"""A chunk of incoming emails is written together: one statement per table (end
users, records, messages, attachments, incoming-log rows, outbox), no savepoint per email,
and the records' events once the rows are written (records.write_behind); an email that
fails makes the chunk be written again an email at a time. Shown on a real Dovecot.
The statement is a multi-row INSERT, or on PostgreSQL a COPY (servicedesk.bulk_insert)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.models import StrangerPolicy
from mailworker.mailboxes.base import FetchedMessage
from mailworker.models import OutboxEmail
from mailworker.outbound.message_ids import record_of_signed_message_id
from mailworker.pipeline import apply as apply_module
from mailworker.pipeline import passes as passes_module
from mailworker.pipeline.passes import fetched_chunks, run_pass
from records.models import (
    Attachment,
    Message,
    ProcessedEmail,
    Quarantine,
    ServiceRecord,
    Status,
    User,
)
from records.services import create_record, get_or_create_end_user, record_email_received
from tests.mail import make_email

pytestmark = pytest.mark.django_db

INSERT_INTO = re.compile(r'^\s*(?:INSERT INTO|COPY) "?(\w+)"?', re.IGNORECASE)


def _inserts(queries: list[dict]) -> Counter[str]:
    """Statements that insert rows (INSERT, COPY), per table."""
    tables = (INSERT_INTO.match(query["sql"]) for query in queries)
    return Counter(match.group(1) for match in tables if match)


def _emails_from_new_senders(count: int) -> list[bytes]:
    return [
        make_email(
            sender=f"Person {n} <person{n}@customer.test>",
            subject=f"Request {n}",
            body=f"Body {n}",
            attachments=[(f"log{n}.txt", "text/plain", f"log of {n}".encode())],
        )
        for n in range(count)
    ]


def _stored_files() -> list[Path]:
    root = Path(django_settings.MEDIA_ROOT) / "attachments"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_a_chunk_is_written_with_one_insert_per_table_and_no_savepoint_per_email(
    dovecot, dovecot_integration, staff_hears_of_new_records, monkeypatch
):
    monkeypatch.setattr(passes_module, "FIRST_CHUNK_MAX_EMAILS", None)  # all in one chunk
    # It sends too, so that the acknowledgements are composed (Message-ID, thread).
    integration = dovecot_integration(
        protocol="imap",
        encryption="ssl",
        outgoing_enabled=True,
        email_address="support@desk.test",
        smtp_host="127.0.0.1",
        smtp_encryption="none",
    )
    count = 30
    dovecot.deliver(integration.incoming_username, _emails_from_new_senders(count))

    with CaptureQueriesContext(connection) as captured:
        report = run_pass(integration=integration)

    assert not report.failed, report.errors
    assert report.counts["created"] == count
    inserts = _inserts(captured.captured_queries)
    for table in (
        "records_user",
        "records_servicerecord",
        "records_message",
        "records_attachment",
        "records_processedemail",
        "records_original",
        "mailworker_outboxemail",
    ):
        # One statement per table; on SQLite Django caps a statement at 999 parameters,
        # so the 60 outbox rows (30 columns each) take two there.
        assert 1 <= inserts[table] <= 2, (table, inserts)
    savepoints = [q for q in captured.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert len(savepoints) < 5, savepoints  # not one an email

    # What was written is whole and points the right way.
    for n in range(count):
        record = ServiceRecord.objects.get(title=f"Request {n}")
        assert record.requester.email == f"person{n}@customer.test"
        assert record.requester.username == f"person{n}@customer.test"
        message = Message.objects.get(record=record)
        assert message.text_body.strip() == f"Body {n}"
        attachment = Attachment.objects.get(message=message)
        assert attachment.file.read() == f"log of {n}".encode()
        # The file's name says its record and message, as for any attachment.
        assert f"attachments/{record.pk}/{message.pk}-log{n}" in attachment.file.name
        marker = ProcessedEmail.objects.get(record=record)
        assert marker.outcome == "created" and marker.original_id is not None
        # Its acknowledgement names the record's number, in the subject and in the signed
        # Message-ID that threads the requester's answer back.
        (acknowledgement,) = OutboxEmail.objects.filter(
            record=record, to_addresses=[f"person{n}@customer.test"]
        )
        assert f"#{record.pk}" in acknowledgement.subject
        assert record_of_signed_message_id(acknowledgement.message_id) == record.pk
        assert OutboxEmail.objects.filter(record=record, to_addresses=["staff@desk.test"]).exists()
    assert len(_stored_files()) == count
    assert dovecot.count(integration.incoming_username) == 0


@pytest.fixture
def staff_hears_of_new_records(make_agent):
    """An agent who may view records: admins hear of every new record."""
    return make_agent("staff", "view_servicerecord")


def test_a_failing_email_makes_the_chunk_be_written_again_an_email_at_a_time(
    dovecot, dovecot_integration, monkeypatch
):
    """Written together, the chunk has no savepoints: the failure rolls all of it back (the
    files its attachments stored go too), and it is written again an email at a time."""
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    raws = _emails_from_new_senders(8)
    dovecot.deliver(integration.incoming_username, raws)
    real_copy = apply_module.queue_copy_of_incoming

    def fail_on_request_5(ctx):
        if ctx.email.subject == "Request 5":
            raise ValueError("a bug in request 5")
        return real_copy(ctx)

    monkeypatch.setattr(apply_module, "queue_copy_of_incoming", fail_on_request_5)

    report = run_pass(integration=integration)

    assert report.counts["created"] == 7 and report.counts["quarantined"] == 1
    assert sorted(ServiceRecord.objects.values_list("title", flat=True)) == sorted(
        f"Request {n}" for n in range(8) if n != 5
    )
    entry = Quarantine.objects.get()
    assert bytes(entry.raw_email) == raws[5] and "a bug in request 5" in entry.reason
    assert ProcessedEmail.objects.count() == 8
    assert User.objects.filter(email="person5@customer.test").count() == 0
    # One file per attachment that exists: none left behind by the rolled-back attempt.
    assert len(_stored_files()) == Attachment.objects.count() == 7
    for attachment in Attachment.objects.all():
        assert attachment.file.read() == f"log of {attachment.filename[3:-4]}".encode()
    assert dovecot.count(integration.incoming_username) == 0


def test_a_participant_made_earlier_in_the_same_chunk_may_write_into_the_record(
    dovecot, dovecot_integration
):
    """The requester's reply copies Carol in; Carol's answer comes in the same chunk. The
    reply is still pending when Carol's email asks who is on the record: it is written
    first, so Carol counts as a participant, as she would a chunk later."""
    integration = dovecot_integration(
        protocol="imap", encryption="ssl", stranger_policy=StrangerPolicy.INTERNAL_NOTE
    )
    jane, _created = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Printer", description="broken", requester=jane)
    subject = f"Re: [#{record.pk}] Printer"
    dovecot.deliver(
        integration.incoming_username,
        [
            make_email(
                sender="jane@customer.test",
                to="support@desk.test, carol@customer.test",
                subject=subject,
                body="Carol knows more.",
            ),
            make_email(sender="carol@customer.test", subject=subject, body="It is tray 2."),
            make_email(sender="mallory@elsewhere.test", subject=subject, body="Not on it."),
        ],
    )

    report = run_pass(integration=integration)

    assert not report.failed, report.errors
    messages = {m.from_address: m for m in Message.objects.filter(record=record)}
    assert messages["carol@customer.test"].is_internal is False
    assert messages["mallory@elsewhere.test"].is_internal is True
    outcomes = dict(ProcessedEmail.objects.values_list("from_address", "outcome"))
    assert outcomes == {
        "jane@customer.test": "appended",
        "carol@customer.test": "appended",
        "mallory@elsewhere.test": "note",
    }


def test_a_duplicate_in_the_same_chunk_points_at_the_first_ones_log_row(
    dovecot, dovecot_integration
):
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(
        integration.incoming_username,
        [make_email(subject="Sent twice", body="Same text, other Message-ID") for _ in range(2)]
        + _emails_from_new_senders(3),
    )

    report = run_pass(integration=integration)

    assert report.counts["created"] == 4 and report.counts["duplicate"] == 1
    first = ProcessedEmail.objects.get(outcome="created", subject="Sent twice")
    duplicate = ProcessedEmail.objects.get(outcome="duplicate")
    assert duplicate.duplicate_of_id == first.pk
    assert ServiceRecord.objects.filter(title="Sent twice").count() == 1


def test_one_new_sender_twice_in_a_chunk_is_one_end_user_with_two_records(
    dovecot, dovecot_integration, django_user_model
):
    """And a new sender whose address is some other user's username gets another username,
    still in the chunk's one INSERT of users."""
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    django_user_model.objects.create_user(
        username="bob@customer.test", email="robert@elsewhere.test", password=None
    )
    dovecot.deliver(
        integration.incoming_username,
        [
            make_email(sender="Ann <ann@customer.test>", subject="First", body="one"),
            make_email(sender="Bob <bob@customer.test>", subject="Bob's", body="two"),
            make_email(sender="Ann <ann@customer.test>", subject="Second", body="three"),
        ],
    )

    with CaptureQueriesContext(connection) as captured:
        report = run_pass(integration=integration)

    assert report.counts["created"] == 3
    assert _inserts(captured.captured_queries)["records_user"] == 1
    ann = User.objects.get(email="ann@customer.test")
    assert ann.username == "ann@customer.test" and ann.first_name == "Ann"
    assert set(ServiceRecord.objects.filter(requester=ann).values_list("title", flat=True)) == {
        "First",
        "Second",
    }
    bob = User.objects.get(email="bob@customer.test")
    assert bob.username.startswith("bob@customer.test-") and not bob.has_usable_password()


def test_record_email_received_outside_a_chunk_writes_at_once():
    """The services keep working one row at a time for everyone else (agents' screens)."""
    jane, _created = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Phone call", description="", requester=jane)
    assert record.pk is not None

    message = record_email_received(
        record=record,
        new_record=False,
        from_address="jane@customer.test",
        subject="More",
        text_body="more",
        html_body="",
        to_addresses=[],
        cc_addresses=[],
        message_id="",
        in_reply_to="",
        references="",
        date=None,
        raw_size=4,
        integration=None,
        sender_verified=None,
        authentication="",
        automatic=False,
    )

    assert message.pk is not None and Message.objects.filter(record=record).count() == 1


def test_a_batch_starts_with_a_small_chunk_and_each_next_is_twice_as_large():
    """Nothing is written while a batch's first chunk is parsed: a small one fills the
    pipeline sooner; the next may be twice as large (writing takes longer than parsing)."""
    messages = [FetchedMessage(uid=str(n), raw=b"x" * 10, size=10) for n in range(400)]

    sizes = [len(chunk) for chunk in fetched_chunks(messages, first_max_emails=20)]

    assert sizes == [20, 40, 80, 100, 100, 60]
    assert [len(c) for c in fetched_chunks(messages)] == [100, 100, 100, 100]
    # Bytes still bound every chunk, the first ones too.
    big = [FetchedMessage(uid=str(n), raw=b"x" * 100, size=100) for n in range(10)]
    assert [len(c) for c in fetched_chunks(big, max_bytes=250, first_max_emails=20)] == [
        3,
        3,
        3,
        1,
    ]


def test_the_records_a_chunk_names_are_read_once_and_shared_by_its_emails(
    dovecot, dovecot_integration, monkeypatch
):
    """Replies naming "#N" in one chunk: one query reads every record they name, and a
    record two replies name is one object, so the second sees what the first changed (the
    status a reply moves a closed record to, moved once)."""
    monkeypatch.setattr(passes_module, "FIRST_CHUNK_MAX_EMAILS", None)  # all in one chunk
    closed = Status.objects.create(name="Closed here", order=90, is_closed=True)
    reopened = Status.objects.create(name="Reopened here", order=91)
    integration = dovecot_integration(protocol="imap", encryption="ssl")
    integration.change_status_to = reopened
    integration.save()
    jane, _created = get_or_create_end_user(email="jane@customer.test")
    records = [create_record(title=f"Old {n}", description="", requester=jane) for n in range(3)]
    ServiceRecord.objects.filter(pk=records[0].pk).update(status=closed)
    replies = [
        make_email(
            sender="Jane <jane@customer.test>",
            subject=f"Re: Old {n % 3} [#{records[n % 3].pk}]",
            body=f"Reply {n}",
        )
        for n in range(6)
    ]
    dovecot.deliver(integration.incoming_username, replies)

    with CaptureQueriesContext(connection) as captured:
        report = run_pass(integration=integration)

    assert report.counts["appended"] == 6, report.counts
    reads = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith('SELECT "records_servicerecord"."id"')
        and '"records_servicerecord"."id" IN' in q["sql"]
    ]
    assert len(reads) == 1, reads
    for n, record in enumerate(records):
        bodies = sorted(
            m.text_body.strip() for m in Message.objects.filter(record=record, direction="in")
        )
        assert bodies == [f"Reply {n}", f"Reply {n + 3}"]
    records[0].refresh_from_db()
    assert records[0].status == reopened
    # Each record moved by the first reply to it only: the second saw the status the first
    # had set.
    moves = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith('UPDATE "records_servicerecord" SET "status_id"')
    ]
    assert len(moves) == len(records), moves
