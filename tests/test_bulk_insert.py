"""servicedesk.bulk_insert: many new rows in one statement (COPY on PostgreSQL, a multi-row
INSERT elsewhere), on the database the suite runs on. What bulk_create did for the chunk's
rows must still hold: keys set, foreign keys read from objects saved just before, auto_now
fields filled, JSON and bytes stored as given, a unique clash a Django IntegrityError."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mailworker.models import OutboxEmail
from records.models import Direction, Message, ProcessedEmail, ServiceRecord, Status, User
from servicedesk import bulk_insert
from servicedesk.bulk_insert import insert_rows

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True, params=["one statement", "few rows"])
def copy_min_rows(request, monkeypatch) -> None:
    """Each test twice: every row count taking the statement for many rows (COPY on
    PostgreSQL), and the one for a few rows (a multi-row INSERT)."""
    if request.param == "one statement":
        monkeypatch.setattr(bulk_insert, "COPY_MIN_ROWS", 1)
    else:
        monkeypatch.setattr(bulk_insert, "COPY_MIN_ROWS", 1000)


def test_rows_pointing_at_each_other_are_written_with_their_keys_and_values() -> None:
    status = Status.objects.order_by("order").first()  # from the migrations
    requesters = [
        User(username=f"user{n}@customer.test", email=f"user{n}@customer.test") for n in range(3)
    ]
    records = [
        ServiceRecord(title=f"Record {n}\u00e9 \u2603", status=status, requester=requesters[n])
        for n in range(3)
    ]
    before = timezone.now()
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        insert_rows(requesters)  # saved after the records were built: read from the objects
        insert_rows(records)
        messages = [
            Message(
                record=record,
                direction=Direction.INCOMING,
                subject="Tab\there, quote ' and backslash \\ and newline\n",
                text_body="line one\nline two\r\n\\N is not NULL",
                to_addresses=["desk@desk.test", "Zoë <zoe@customer.test>"],
                defects=[],
                date=None,
                raw_size=12345,
                sender_verified=None if n else True,
            )
            for n, record in enumerate(records)
        ]
        insert_rows(messages)
    # One statement a table (and on PostgreSQL one query for the keys).
    inserting = [q for q in captured.captured_queries if q["sql"].startswith(("INSERT", "COPY"))]
    assert len(inserting) == 3

    assert all(row.pk is not None and not row._state.adding for row in [*records, *messages])
    for n, record in enumerate(records):
        stored = ServiceRecord.objects.select_related("requester").get(pk=record.pk)
        assert stored.title == f"Record {n}\u00e9 \u2603"
        assert stored.requester.email == f"user{n}@customer.test"
        assert stored.created_at >= before and stored.updated_at >= before
        assert record.created_at == stored.created_at  # set on the object too, as save() does
    for n, message in enumerate(messages):
        stored = Message.objects.get(pk=message.pk)
        assert stored.record_id == records[n].pk
        assert stored.subject == "Tab\there, quote ' and backslash \\ and newline\n"
        assert stored.text_body == "line one\nline two\r\n\\N is not NULL"
        assert stored.to_addresses == ["desk@desk.test", "Zoë <zoe@customer.test>"]
        assert stored.date is None and stored.raw_size == 12345
        assert stored.sender_verified is (None if n else True)
    # The keys came from the table's own sequence: a row saved later gets the next one.
    later = ServiceRecord.objects.create(title="Later", status=status, requester=requesters[0])
    assert later.pk > max(record.pk for record in records)


def test_bytes_json_and_a_naive_datetime_are_stored_as_django_would() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    rows = [
        OutboxEmail(
            kind=OutboxEmail.Kind.COPY_INCOMING,
            to_addresses=["a@customer.test"],
            references=["<one@x>", "<two@x>"],
            attached_email=b"\x00\xff raw \\ bytes\n",
            next_attempt_at=None,
        ),
        OutboxEmail(kind=OutboxEmail.Kind.TEST, to_addresses=[], claimed_at=timezone.now()),
    ]
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        rows[1].sent_at = naive
        insert_rows(rows)
    first, second = OutboxEmail.objects.order_by("pk")
    assert bytes(first.attached_email) == b"\x00\xff raw \\ bytes\n"
    assert first.references == ["<one@x>", "<two@x>"] and first.state == "pending"
    assert bytes(second.attached_email) == b""
    assert second.sent_at == timezone.make_aware(naive) and second.claimed_at is not None
    assert abs(second.created_at - timezone.now()) < timedelta(minutes=1)


def test_a_unique_clash_is_django_s_integrity_error_and_nothing_is_written(
    make_integration,
) -> None:
    integration = make_integration()
    ProcessedEmail.objects.create(integration=integration, key="k1", outcome="created")
    rows = [
        ProcessedEmail(integration=integration, key=key, outcome="created") for key in ("k0", "k1")
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(rows)
    assert list(ProcessedEmail.objects.values_list("key", flat=True)) == ["k1"]


def test_nothing_to_insert_is_no_statement() -> None:
    with CaptureQueriesContext(connection) as captured:
        insert_rows([])
    assert not captured.captured_queries
