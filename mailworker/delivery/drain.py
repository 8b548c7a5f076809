"""Delivery: drains the outbox through a `Sender` per integration.

A drain claims due rows (two workers never take the same row), composes the bytes of first
attempts once and stores them (every retry sends the same email), sends them a chunk at a
time over one session per integration for the whole drain, and commits each chunk's results
before sending the next.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.delivery.results import Failure, SendReport, record_results, update_rows
from mailworker.models import OutboxEmail
from mailworker.outbound.compose import AttachedFile, compose
from mailworker.senders import Envelope, Sender, sender_for
from mailworker.status import note_failure, note_success
from mailworker.transport.errors import TransportError

State = OutboxEmail.State
CLAIM_TIMEOUT = timedelta(minutes=10)  # a row "sending" longer than this lost its worker
SEND_CHUNK = 50  # envelopes per send(); results are committed after each chunk


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
            cc=row.cc_addresses,
            bcc=row.bcc_addresses,
            attached_email=bytes(row.attached_email),
            files=attached_files(row),
            message_id=row.message_id,
        ).raw
    update_rows(missing, ["raw_message"])


def attached_files(row: OutboxEmail) -> list[AttachedFile]:
    """The files of the message-log entry a reply delivers (an agent's attachments), read
    once, when the email is composed: its bytes are then stored with the row."""
    if row.kind != OutboxEmail.Kind.REPLY or row.log_message_id is None:
        return []
    files = []
    for attachment in row.log_message.attachments.all():
        with attachment.file.open("rb") as stored:
            content = stored.read()
        files.append(
            AttachedFile(
                filename=attachment.filename,
                content_type=attachment.content_type,
                content=content,
            )
        )
    return files


def envelope_of(row: OutboxEmail) -> Envelope:
    """What the transport gets: every recipient, Bcc ones too (they are in no header)."""
    return Envelope(
        sender=row.sender_address,
        recipients=[*row.to_addresses, *row.cc_addresses, *row.bcc_addresses],
        message=bytes(row.raw_message),
        bcc=list(row.bcc_addresses),
    )


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


class Senders:
    """One session per integration for a whole drain of the outbox, closed (QUIT) at its
    end: a connection, TLS handshake and login per chunk cost a quarter of sending."""

    def __init__(self) -> None:
        self._senders: dict[int, Sender] = {}

    def __enter__(self) -> Senders:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sender in self._senders.values():
            sender.close()

    def sender(self, integration: EmailIntegration) -> Sender:
        if integration.pk not in self._senders:
            self._senders[integration.pk] = sender_for(integration)
        return self._senders[integration.pk]


def send_rows(rows: list[OutboxEmail], report: SendReport, senders: Senders) -> None:
    for integration, group in _by_integration(rows):
        if integration is None or not integration.outgoing_enabled:
            error = (
                "its integration no longer sends email (Outgoing Emails is off or it was deleted)"
            )
            failures = [Failure(row, error, temporary=False) for row in group]
            record_results(report, sent=[], failures=failures)
            continue
        for start in range(0, len(group), SEND_CHUNK):
            chunk = group[start : start + SEND_CHUNK]
            _compose_missing(chunk)
            envelopes = [envelope_of(row) for row in chunk]
            try:
                deliveries = senders.sender(integration).send(envelopes)
            except TransportError as error:
                note_failure(integration=integration, direction="send email", error=error.message)
                # The session failed (server down, password changed): retry with back-off,
                # since an admin's fix makes the same email go out.
                failures = [Failure(row, error.message, temporary=True) for row in chunk]
                record_results(report, sent=[], failures=failures)
                continue
            note_success(integration=integration)
            sent, failures = [], []
            for row, delivery in zip(chunk, deliveries, strict=True):
                if delivery.accepted:
                    sent.append((row, delivery.response))
                else:
                    error = delivery.error
                    failures.append(
                        Failure(
                            row,
                            error.message if error else "not accepted",
                            temporary=error.temporary if error else True,
                        )
                    )
            record_results(report, sent=sent, failures=failures)


def send_due(*, batch: int = 200, max_rounds: int = 50) -> SendReport:
    """Send everything due now, batch by batch."""
    report = SendReport()
    with Senders() as senders:
        for _round in range(max_rounds):
            rows = claim_due(limit=batch)
            if not rows:
                break
            send_rows(rows, report, senders)
    return report
