"""Queueing into the outbox: every email the desk sends is first a row, written in the
transaction of the event that caused it, its headers checked and its Message-ID chosen there
(the Message-ID is known at once; the bytes are composed once, by delivery, and stored so
that retries send the same bytes), and sent by a Celery task after the commit.

This module imports no transport: it starts the send task by name, and `mailworker.delivery`
drains the rows through a `Sender`.

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

from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from integrations import selectors as integration_selectors
from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.models import OutboxEmail
from mailworker.outbound.compose import check_headers, new_message_id
from records import write_behind
from records.models import Direction, Message, ServiceRecord
from servicedesk.bulk_insert import insert_rows

logger = logging.getLogger(__name__)
State = OutboxEmail.State
Kind = OutboxEmail.Kind
# Kinds that are never capped nor counted against the cap: their recipients are the desk's
# own choice (Settings > Email), and they must not vanish because someone else is loud.
UNCAPPED_KINDS = frozenset({Kind.FORWARD_IGNORED, Kind.COPY_INCOMING})
# The task that drains the outbox, started by name: queueing never imports delivery.
SEND_TASK = "mailworker.tasks.send_outbox"


def sending_integration(*, record: ServiceRecord | None = None) -> EmailIntegration | None:
    """The record's own integration when it sends, else the default one (system emails too):
    the rule of integrations.selectors, which the record screens use too. The sending
    integrations are read once per batch."""
    choices = batched(SENDING_INTEGRATIONS, integration_selectors.sending_integrations)
    return integration_selectors.sending_integration(record=record, choices=choices)


SENDING_INTEGRATIONS = "sending integrations"


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
        insert_rows(batch.pending)
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
    write_behind.write_for_record(record.pk)  # the messages its chunk has not written yet
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
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
) -> Queued:
    """Compose and queue an email; sending starts once the caller's transaction commits.
    `thread`: the record's (In-Reply-To, References), when the caller already read them
    with record_thread() for several emails about one event. `cc`, `bcc`: a person's email
    only (an agent's reply); an address already among the earlier recipients is dropped."""
    if automatic and (cc or bcc):
        raise ValueError("Automatic emails go one recipient a row: no Cc or Bcc.")
    if record is not None and record.pk is None:
        # Opened in a chunk written together (records.write_behind): the email names its
        # number, so it is written now.
        write_behind.write_pending()
    integration = integration or sending_integration(record=record)
    kept, removed = split_recipients(to)
    kept_cc, removed_cc = split_recipients([*kept, *cc])
    kept_cc = kept_cc[len(kept) :]
    kept_bcc, removed_bcc = split_recipients([*kept, *kept_cc, *bcc])
    kept_bcc = kept_bcc[len(kept) + len(kept_cc) :]
    result = Queued(removed=[*removed, *removed_cc, *removed_bcc])
    if not (kept or kept_cc or kept_bcc):
        return result
    if thread is None:
        thread = record_thread(record) if record is not None else ("", [])
    in_reply_to, references = thread
    # Automatic emails go one recipient a row: the cap counts per recipient.
    groups = [[address] for address in kept] if automatic else [kept]
    to_send = False
    for recipients in groups:
        counted = automatic and capped(kind=kind, recipient=recipients[0])
        row = OutboxEmail(
            kind=kind,
            integration=integration,
            record=record,
            to_addresses=recipients,
            cc_addresses=[] if automatic else kept_cc,
            bcc_addresses=[] if automatic else kept_bcc,
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
            check_headers(to=[*recipients, *row.cc_addresses, *row.bcc_addresses], subject=subject)
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
        to_send = to_send or row.state == State.PENDING
    if log_message is not None and result.rows and result.rows[0].message_id:
        Message.objects.filter(pk=log_message.pk).update(
            subject=subject[:998],
            message_id=result.rows[0].message_id,
            in_reply_to=in_reply_to,
            references=" ".join(references),
            from_address=integration.email_address if integration else "",
            to_addresses=kept,
            cc_addresses=kept_cc,
            bcc_addresses=kept_bcc,
        )
    if to_send:  # not for rows that failed or were held back at once: nothing to send
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
    if not settings.OUTBOX_SEND_ON_COMMIT:
        return
    try:
        current_app.send_task(SEND_TASK)
    except Exception:  # the broker is down: beat's regular run sends it later
        logger.warning("outbox: could not queue the send task; beat will retry", exc_info=True)
