"""Recording what became of the emails a drain sent: the sent ones in their records'
message logs, the failed ones retried with back-off or given up, a chunk at a time."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from mailworker.models import OutboxEmail
from records.models import Direction, ServiceRecord
from records.services import add_message

logger = logging.getLogger(__name__)
State = OutboxEmail.State
MAX_ATTEMPTS = 10


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Failure:
    row: OutboxEmail
    error: str
    temporary: bool


@dataclass
class SendReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def record_results(
    report: SendReport, *, sent: list[tuple[OutboxEmail, str]], failures: list[Failure]
) -> None:
    """What became of a chunk, committed at once: a commit per email cost more than sending
    it. A crash before this commit sends only this chunk again."""
    with transaction.atomic():
        _mark_sent(sent)
        given_up = _mark_failed(failures)
    report.sent += len(sent)
    report.failed += given_up
    report.retrying += len(failures) - given_up


def _mark_sent(sent: list[tuple[OutboxEmail, str]]) -> None:
    if not sent:
        return
    now = timezone.now()
    rows = [row for row, _response in sent]
    _log_outgoing([row for row in rows if row.record_id and row.log_message_id is None])
    for row, response in sent:
        row.state = State.SENT
        row.sent_at = now
        row.smtp_response = response[:2000]
        row.last_error = ""
    update_rows(rows, ["state", "sent_at", "smtp_response", "last_error", "log_message"])


def _log_outgoing(rows: list[OutboxEmail]) -> None:
    """The sent emails' entries in their records' message logs; each record is touched once
    (moved up the lists) rather than once an email."""
    if not rows:
        return
    records = ServiceRecord.objects.in_bulk({row.record_id for row in rows})
    for row in rows:
        record = records.get(row.record_id)
        if record is None:  # deleted since the email was claimed: no log to write to
            continue
        row.log_message = add_message(
            record=record,
            direction=Direction.OUTGOING,
            from_address=row.sender_address,
            subject=row.subject,
            text_body=row.text_body,
            to_addresses=row.to_addresses,
            message_id=row.message_id,
            in_reply_to=row.in_reply_to,
            raw_size=len(row.raw_message),
            integration=row.integration,
            touch_record=False,
        )
    ServiceRecord.objects.filter(pk__in=list(records)).update(updated_at=timezone.now())


def _mark_failed(failures: list[Failure]) -> int:
    """Schedule a retry with back-off, or give up; returns how many were given up."""
    now = timezone.now()
    given_up = 0
    for failure in failures:
        row = failure.row
        attempts = row.attempts + 1
        give_up = not failure.temporary or attempts >= MAX_ATTEMPTS
        logger.warning(
            "outbox: email %s to %s %s after attempt %d: %s",
            row.pk,
            ", ".join(row.to_addresses),
            "failed" if give_up else "will be retried",
            attempts,
            failure.error,
        )
        row.state = State.FAILED if give_up else State.PENDING
        row.attempts = attempts
        row.last_error = failure.error[:5000]
        row.next_attempt_at = None if give_up else now + backoff(attempts)
        given_up += give_up
    update_rows(
        [failure.row for failure in failures],
        ["state", "attempts", "last_error", "next_attempt_at"],
    )
    return given_up


def update_rows(rows: list[OutboxEmail], fields: list[str]) -> None:
    """Write these fields of each row, with one executemany for all. Django's bulk_update
    builds a CASE expression per field and row, and cost more than the UPDATE per row it
    was to replace: for 1,000 sent emails 0.5 s on SQLite and 0.75 s on PostgreSQL, against
    0.01 s and 0.1 s this way."""
    if not rows:
        return
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    meta = OutboxEmail._meta
    columns = [meta.get_field(name) for name in fields]
    assignments = ", ".join(f"{quote(column.column)} = %s" for column in columns)
    # Only the model's own names, quoted, go into the text; every value is a parameter.
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608
    params = [
        [column.get_db_prep_save(getattr(row, column.attname), connection) for column in columns]
        + [row.pk]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
