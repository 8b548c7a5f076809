"""The outbox: every email the desk sends is first a row, written in the transaction of the
event that caused it, composed there (so retries send the same bytes and the Message-ID is
known at once), and sent by a Celery task after the commit.

Guards, applied when queueing: never to an address one of our incoming integrations reads
(the desk would mail itself), and at most AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR automatic
emails to one address outside the desk an hour (loops with auto-responders stop there). The
cap protects outsiders, never the team: it does not apply to active staff's addresses, nor
to forwarded ignored emails and copies of incoming emails (whose recipients an admin chose),
or else one outsider opening records fast would silence every notification to the agents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.models import OutboxEmail
from mailworker.outbound.compose import check_headers, compose, new_message_id
from mailworker.outbound.smtp import Envelope, SmtpFailure, SmtpSender
from records.models import Direction, Message, ServiceRecord
from records.services import add_message

logger = logging.getLogger(__name__)
State = OutboxEmail.State
Kind = OutboxEmail.Kind
# Kinds that are never capped nor counted against the cap: their recipients are the desk's
# own choice (Settings > Email), and they must not vanish because someone else is loud.
UNCAPPED_KINDS = frozenset({Kind.FORWARD_IGNORED, Kind.COPY_INCOMING})
MAX_ATTEMPTS = 10
CLAIM_TIMEOUT = timedelta(minutes=10)  # a row "sending" longer than this lost its worker
SEND_CHUNK = 50  # envelopes per SMTP connection; results are committed after each chunk


def sending_integration(*, record: ServiceRecord | None = None) -> EmailIntegration | None:
    """The record's own integration when it sends, else the default one (system emails too)."""
    if record is not None and record.source_integration_id:
        source = record.source_integration
        if source is not None and source.outgoing_enabled:
            return source
    default = EmailIntegration.objects.filter(is_default=True, outgoing_enabled=True).first()
    return default or EmailIntegration.objects.filter(outgoing_enabled=True).order_by("pk").first()


@dataclass
class _Batch:
    # Automatic emails counted against the cap per recipient in the last hour (counted up
    # to the cap): counted once per batch and then kept up to date as rows are queued, so
    # an admin who hears of every new record costs one count, not one a row.
    automatic_counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    # Rows queued in this batch, inserted with one statement when it ends (still inside the
    # caller's transaction, so they commit with the events that queued them).
    pending: list[OutboxEmail] = field(default_factory=list)


T = TypeVar("T")
_batch: ContextVar[_Batch | None] = ContextVar("outbox_batch", default=None)


@contextmanager
def batched_outbox(*, desk_addresses: frozenset[str] | None = None) -> Iterator[None]:
    """For code that queues many emails in one transaction (a chunk of incoming emails):
    what their notifications look up alike is read once for all of them, not once an email,
    and the rows are inserted together at the end. Use it inside the transaction.
    `desk_addresses`: the addresses the desk reads, when the caller has them already."""
    batch = _Batch()
    if desk_addresses is not None:
        batch.values[DESK_ADDRESSES] = desk_addresses
    token = _batch.set(batch)
    try:
        yield
        _insert_pending(batch)
    finally:
        _batch.reset(token)


def _insert_pending(batch: _Batch) -> None:
    if batch.pending:
        OutboxEmail.objects.bulk_create(batch.pending)
        batch.pending.clear()


def _save_row(row: OutboxEmail) -> None:
    batch = _batch.get()
    if batch is None:
        row.save()
    else:
        batch.pending.append(row)


def batch_mark() -> int:
    """Where the batch stands, for a caller about to open a savepoint (see rollback_batch_to)."""
    batch = _batch.get()
    return len(batch.pending) if batch is not None else 0


def rollback_batch_to(mark: int) -> None:
    """The savepoint opened at `mark` rolled back: the rows queued since are dropped, the
    earlier ones inserted now, and the cap is counted from the database again (what this
    batch counted included the dropped rows)."""
    batch = _batch.get()
    if batch is None:
        return
    del batch.pending[mark:]
    _insert_pending(batch)
    batch.automatic_counts.clear()


def batched(key: str, load: Callable[[], T]) -> T:
    """`load()`, read once per batch (see batched_outbox) and every time outside one: for
    what notifications of many emails look up alike (the notification settings, the staff)."""
    batch = _batch.get()
    if batch is None:
        return load()
    if key not in batch.values:
        batch.values[key] = load()
    return batch.values[key]


DESK_ADDRESSES = "desk addresses"


def _desk_addresses() -> frozenset[str]:
    return batched(DESK_ADDRESSES, lambda: frozenset(addresses_read_by_incoming_integrations()))


def split_recipients(recipients: Sequence[str]) -> tuple[list[str], list[str]]:
    """(kept, removed): addresses the desk reads itself are removed, and logged."""
    ours = _desk_addresses()
    kept, removed, seen = [], [], set()
    for address in recipients:
        normalised = address.strip().lower()
        if not normalised or normalised in seen:
            continue
        seen.add(normalised)
        (removed if normalised in ours else kept).append(address.strip())
    if removed:
        logger.info("outbox: not sending to %s: an incoming integration reads it", removed)
    return kept, removed


STAFF_ADDRESSES = "staff addresses"


def _staff_addresses() -> frozenset[str]:
    """The lowercased addresses of active staff, read once per batch."""
    users = get_user_model().objects.filter(Q(is_staff=True) | Q(is_superuser=True))
    addresses = users.filter(is_active=True).exclude(email="").values_list("email", flat=True)
    return frozenset(address.strip().lower() for address in addresses)


def capped(*, kind: str, recipient: str) -> bool:
    """Whether the cap on automatic emails applies to this email: only to addresses outside
    the desk, and never to the kinds an admin routed on purpose."""
    if kind in UNCAPPED_KINDS:
        return False
    return recipient.strip().lower() not in batched(STAFF_ADDRESSES, _staff_addresses)


def over_automatic_cap(recipient: str) -> bool:
    return _automatic_count(recipient.lower()) >= settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR


def _automatic_count(recipient: str) -> int:
    batch = _batch.get()
    if batch is not None and recipient in batch.automatic_counts:
        return batch.automatic_counts[recipient]
    cap = settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR
    # Count no further than the cap: an address that hears of every new record (an admin)
    # has thousands of rows in the hour, and counting them all for each new email made a
    # busy mailbox quadratic.
    count = _counted_against_cap().filter(recipient=recipient).values("pk")[:cap].count()
    if batch is not None:
        batch.automatic_counts[recipient] = count
    return count


def _counted_against_cap():
    since = timezone.now() - timedelta(hours=1)
    return (
        OutboxEmail.objects.filter(is_automatic=True, created_at__gte=since)
        .exclude(state=State.SUPPRESSED)
        .exclude(kind__in=UNCAPPED_KINDS)
    )


def prefetch_automatic_counts(recipients: Sequence[str]) -> None:
    """Count the cap for many recipients with one query (a chunk's senders, who each get
    an acknowledgement): rows beyond the cap are suppressed, so each count is at most
    about the cap."""
    batch = _batch.get()
    wanted = {address.strip().lower() for address in recipients if address.strip()}
    wanted -= set(batch.automatic_counts) if batch else set()
    if batch is None or not wanted:
        return
    counts = dict(
        _counted_against_cap()
        .filter(recipient__in=wanted)
        .values("recipient")
        .annotate(count=Count("pk"))
        .values_list("recipient", "count")
    )
    for recipient in wanted:
        batch.automatic_counts[recipient] = counts.get(recipient, 0)


def _count_queued_automatic(recipient: str) -> None:
    batch = _batch.get()
    if batch is not None and recipient in batch.automatic_counts:
        batch.automatic_counts[recipient] += 1


def record_thread(record: ServiceRecord) -> tuple[str, list[str]]:
    """(In-Reply-To, References) for a new email about this record: the emails the end user
    has seen (theirs, and ours to them), not our internal notifications to admins, and not
    internal notes (a non-participant's Message-ID is their words, never sent on)."""
    requester = (record.requester.email or "").lower()
    ids = []
    for direction, message_id, to_addresses in (
        Message.objects.filter(record=record, is_internal=False)
        .exclude(message_id="")
        .order_by("created_at", "id")
        .values_list("direction", "message_id", "to_addresses")
    ):
        if direction == Direction.INCOMING or requester in [a.lower() for a in to_addresses]:
            ids.append(message_id)
    return (ids[-1] if ids else ""), ids


@dataclass
class Queued:
    rows: list[OutboxEmail] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def queue_email(
    *,
    kind: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str = "",
    record: ServiceRecord | None = None,
    integration: EmailIntegration | None = None,
    log_message: Message | None = None,
    automatic: bool = True,
    attached_email: bytes = b"",
    thread: tuple[str, list[str]] | None = None,
) -> Queued:
    """Compose and queue an email; sending starts once the caller's transaction commits.
    `thread`: the record's (In-Reply-To, References), when the caller already read them
    with record_thread() for several emails about one event."""
    integration = integration or sending_integration(record=record)
    kept, removed = split_recipients(to)
    result = Queued(removed=removed)
    if not kept:
        return result
    if thread is None:
        thread = record_thread(record) if record is not None else ("", [])
    in_reply_to, references = thread
    # Automatic emails go one recipient a row: the cap counts per recipient.
    groups = [[address] for address in kept] if automatic else [kept]
    for recipients in groups:
        counted = automatic and capped(kind=kind, recipient=recipients[0])
        row = OutboxEmail(
            kind=kind,
            integration=integration,
            record=record,
            to_addresses=recipients,
            recipient=recipients[0].lower() if automatic else "",
            subject=subject[:998],
            text_body=text,
            attached_email=attached_email,
            is_automatic=automatic,
            log_message=log_message,
            next_attempt_at=timezone.now(),
        )
        if integration is None:
            row.state = State.FAILED
            row.last_error = (
                "No integration can send email: turn on Outgoing Emails on the default "
                "integration (Settings > Email)."
            )
        elif counted and over_automatic_cap(recipients[0]):
            row.state = State.SUPPRESSED
            row.last_error = (
                f"Not sent: {settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR} automatic emails "
                f"went to {recipients[0]} within the hour already, the most an address outside "
                "the desk gets (a loop with an auto-responder, or a flood?)"
            )
        else:
            # Composing takes milliseconds (the stdlib's header folding): it waits for the
            # send, so that importing a busy mailbox is not paced by it. What compose()
            # would refuse is refused now, in the caller's transaction.
            check_headers(to=recipients, subject=subject)
            row.message_id = new_message_id(
                integration, record_id=record.pk if record is not None else None
            )
            row.sender_address = integration.email_address
            row.html_body = html
            row.in_reply_to = in_reply_to
            row.references = list(references)
        if counted and row.state != State.SUPPRESSED:
            _count_queued_automatic(row.recipient)
        _save_row(row)
        result.rows.append(row)
    if log_message is not None and result.rows and result.rows[0].message_id:
        Message.objects.filter(pk=log_message.pk).update(
            subject=subject[:998],
            message_id=result.rows[0].message_id,
            in_reply_to=in_reply_to,
            references=" ".join(references),
            from_address=integration.email_address if integration else "",
            to_addresses=kept,
        )
    _request_sending_on_commit()
    return result


def _request_sending_on_commit() -> None:
    """One send task per commit is enough (it drains every due row): a transaction that
    queues a hundred emails asks once. Looking at the pending callbacks, rather than
    keeping a flag, stays right when the savepoint that asked is rolled back."""
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(
        func is request_sending for _savepoints, func, _robust in connection.run_on_commit
    ):
        return
    transaction.on_commit(request_sending)


def request_sending() -> None:
    """Ask a worker to drain the outbox now (beat also does it regularly)."""
    from mailworker.tasks import send_outbox

    if not settings.OUTBOX_SEND_ON_COMMIT:
        return
    try:
        send_outbox.delay()
    except Exception:  # the broker is down: beat's regular run sends it later
        logger.warning("outbox: could not queue the send task; beat will retry", exc_info=True)


# Sending -------------------------------------------------------------------------------


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


def claim_due(*, limit: int) -> list[OutboxEmail]:
    """Take up to `limit` due rows for this worker; two workers never take the same row."""
    now = timezone.now()
    OutboxEmail.objects.filter(state=State.SENDING, claimed_at__lt=now - CLAIM_TIMEOUT).update(
        state=State.PENDING
    )
    with transaction.atomic():
        due = (
            OutboxEmail.objects.select_for_update(skip_locked=True)
            .filter(state=State.PENDING)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by("id")[:limit]
        )
        rows = list(due)
        OutboxEmail.objects.filter(pk__in=[row.pk for row in rows]).update(
            state=State.SENDING, claimed_at=now
        )
    return rows


@dataclass(frozen=True)
class _Failure:
    row: OutboxEmail
    error: str
    temporary: bool


@dataclass
class SendReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _record_results(
    report: SendReport, *, sent: list[tuple[OutboxEmail, str]], failures: list[_Failure]
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
    _update_rows(rows, ["state", "sent_at", "smtp_response", "last_error", "log_message"])


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


def _mark_failed(failures: list[_Failure]) -> int:
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
    _update_rows(
        [failure.row for failure in failures],
        ["state", "attempts", "last_error", "next_attempt_at"],
    )
    return given_up


def _update_rows(rows: list[OutboxEmail], fields: list[str]) -> None:
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


def composed_bytes(row: OutboxEmail) -> bytes:
    """The email's bytes: composed on the first attempt and stored, so that every retry
    sends exactly the same email."""
    _compose_missing([row])
    return bytes(row.raw_message)


def _compose_missing(rows: list[OutboxEmail]) -> None:
    """Compose the emails that have no bytes yet (first attempts) and store them with one
    UPDATE, before any of them is sent: a retry must send the very same bytes."""
    missing = [row for row in rows if not row.raw_message]
    for row in missing:
        assert row.integration is not None
        row.raw_message = compose(
            integration=row.integration,
            to=row.to_addresses,
            subject=row.subject,
            text=row.text_body,
            html=row.html_body,
            in_reply_to=row.in_reply_to,
            references=row.references,
            automatic=row.is_automatic,
            attached_email=bytes(row.attached_email),
            message_id=row.message_id,
        ).raw
    _update_rows(missing, ["raw_message"])


def _by_integration(
    rows: list[OutboxEmail],
) -> list[tuple[EmailIntegration | None, list[OutboxEmail]]]:
    """The rows grouped by the integration that sends them, which is read (and its secrets
    decrypted) once a group rather than once a row."""
    groups: dict[int | None, list[OutboxEmail]] = {}
    for row in rows:
        groups.setdefault(row.integration_id, []).append(row)
    grouped = []
    for group in groups.values():
        integration = group[0].integration
        for row in group:
            row.integration = integration
        grouped.append((integration, group))
    return grouped


class _Senders:
    """One SMTP session per integration for a whole drain of the outbox, closed (QUIT) at
    its end: a connection, TLS handshake and login per chunk cost a quarter of sending."""

    def __init__(self) -> None:
        self._senders: dict[int, SmtpSender] = {}

    def __enter__(self) -> _Senders:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sender in self._senders.values():
            sender.close()

    def sender(self, integration: EmailIntegration) -> SmtpSender:
        if integration.pk not in self._senders:
            self._senders[integration.pk] = SmtpSender(integration)
        return self._senders[integration.pk]


def send_rows(rows: list[OutboxEmail], report: SendReport, senders: _Senders) -> None:
    from mailworker.status import note_failure, note_success  # health queues via this module

    for integration, group in _by_integration(rows):
        if integration is None or not integration.outgoing_enabled:
            error = (
                "its integration no longer sends email (Outgoing Emails is off or it was deleted)"
            )
            failures = [_Failure(row, error, temporary=False) for row in group]
            _record_results(report, sent=[], failures=failures)
            continue
        for start in range(0, len(group), SEND_CHUNK):
            chunk = group[start : start + SEND_CHUNK]
            _compose_missing(chunk)
            envelopes = [
                Envelope(
                    sender=row.sender_address,
                    recipients=row.to_addresses,
                    message=bytes(row.raw_message),
                )
                for row in chunk
            ]
            try:
                deliveries = senders.sender(integration).send(envelopes)
            except SmtpFailure as failure:
                note_failure(
                    integration=integration, direction="send email", error=failure.problem.message
                )
                # The session failed (server down, password changed): retry with back-off,
                # since an admin's fix makes the same email go out.
                failures = [_Failure(row, failure.problem.message, temporary=True) for row in chunk]
                _record_results(report, sent=[], failures=failures)
                continue
            note_success(integration=integration)
            sent, failures = [], []
            for row, delivery in zip(chunk, deliveries, strict=True):
                if delivery.accepted:
                    sent.append((row, delivery.response))
                else:
                    problem = delivery.problem
                    failures.append(
                        _Failure(
                            row,
                            problem.message if problem else "not accepted",
                            temporary=problem.temporary if problem else True,
                        )
                    )
            _record_results(report, sent=sent, failures=failures)


def send_due(*, batch: int = 200, max_rounds: int = 50) -> SendReport:
    """Send everything due now, batch by batch."""
    report = SendReport()
    with _Senders() as senders:
        for _round in range(max_rounds):
            rows = claim_due(limit=batch)
            if not rows:
                break
            send_rows(rows, report, senders)
    return report
