"""Emails, from raw bytes to their outcome, each atomically with its processed marker.

A pass processes a chunk of emails in one transaction (`process_chunk`), so a busy mailbox
costs a commit per chunk, not per email, and writes the chunk together: no savepoint per
email, the rows of each table inserted with one statement at the chunk's end
(records.write_behind). Nothing here raises for a problem of an email: what it makes go
wrong rolls the chunk back, which is then written again an email at a time with a savepoint
each; the failing email is rolled back to its savepoint and its raw bytes quarantined with
the error, so the chunk goes on. Only a failure of the system itself (the database is
unreachable) propagates: then the chunk's transaction rolls back, nothing of it is acked,
and its emails stay in the mailbox for the next pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, transaction

from integrations.models import EmailIntegration
from mailworker.inbound import InboundEmail
from mailworker.models import OutboxEmail, UnalertedFlood
from mailworker.notifications import queue_flood_alert
from mailworker.outbound.queue import (
    batch_mark,
    batched_outbox,
    prefetch_automatic_counts,
    queue_email,
    rollback_batch_to,
)
from mailworker.pipeline.apply import apply_email, evaluate_rules_for, queue_forward_of_ignored
from mailworker.pipeline.context import EmailContext, Verdict
from mailworker.pipeline.defects import readable_defects
from mailworker.pipeline.filters import run_filters
from mailworker.pipeline.filters.duplicate_guard import fingerprint
from mailworker.pipeline.filters.match_record import numbers_named
from mailworker.pipeline.flood_counts import (
    exempt_domains,
    flood_keys,
    floods_held_in_window,
    keys_counting,
    source_of,
)
from mailworker.pipeline.lookups import (
    ChunkLookups,
    PassLookups,
    load_chunk_lookups,
    load_pass_lookups,
)
from mailworker.pipeline.parse_ahead import Parsed, parse, parse_all
from records import write_behind
from records.email_rules import NO_RULES, RuleOutcome
from records.models import Original, ProcessedEmail, Quarantine, ServiceRecord
from records.originals import original_rows, store_file

logger = logging.getLogger(__name__)
Outcome = ProcessedEmail.Outcome
ALREADY_PROCESSED = "already processed"
# Errors that mean the database is not there: retry the email later, do not quarantine it.
SYSTEM_ERRORS = (OperationalError, InterfaceError)

# What a filter's verdict makes of the email in the incoming email log: a new kind of verdict
# (its action) is a line here. A quarantine held by the flood limit is logged as FLOOD.
VERDICT_OUTCOMES: dict[str, str] = {
    "ignore": Outcome.IGNORED,
    "duplicate": Outcome.DUPLICATE,
    "loop": Outcome.LOOP,
    "bounce": Outcome.BOUNCE,
    "quarantine": Outcome.QUARANTINED,
}
# Verdicts after which the email is forwarded to the integration's "forward ignored" users.
FORWARDED_OUTCOMES = frozenset({Outcome.IGNORED, Outcome.LOOP})


@dataclass(frozen=True)
class ProcessResult:
    outcome: str  # an Outcome value, or ALREADY_PROCESSED
    record_id: int | None = None
    reason: str = ""
    # The record when it had no number yet (opened in a chunk written together): the
    # number is read from it once the chunk has committed (see with_record_number).
    record: ServiceRecord | None = field(default=None, compare=False, repr=False)

    def with_record_number(self) -> ProcessResult:
        if self.record_id is None and self.record is not None and self.record.pk is not None:
            return replace(self, record_id=self.record.pk, record=None)
        return self


def marker_key(raw: bytes, *, identity: str = "") -> str:
    """The processed marker's key: the SHA-256 of the raw bytes.

    A message fetched again after a crash between commit and ack has the same bytes, so it is
    recognised. Unlike the Message-ID, the bytes cannot be shared by two different emails
    (some mailers reuse Message-IDs), so no email is ever dropped as "already seen".
    `identity`: the server's own stable name of the message, for servers whose bytes may
    differ between two fetches (see FetchedMessage.identity); the key is then its SHA-256.
    """
    if identity:
        return hashlib.sha256(b"identity:" + identity.encode("utf-8", "replace")).hexdigest()
    return hashlib.sha256(raw).hexdigest()


def already_processed(*, integration: EmailIntegration, key: str) -> bool:
    return ProcessedEmail.objects.filter(integration=integration, key=key).exists()


def _mark(
    ctx_or_email: EmailContext | InboundEmail | None,
    *,
    integration: EmailIntegration,
    key: str,
    outcome: str,
    size: int,
    record: ServiceRecord | None = None,
    fingerprint: str = "",
    reason: str = "",
    quarantine: Quarantine | None = None,
    duplicate_of_id: int | None = None,
    original: Original | None = None,
) -> ProcessedEmail:
    """The processed marker, which is also the email's row of the incoming email log: every
    field comes from what the pipeline has at hand, so the log costs no query of its own."""
    email = ctx_or_email.email if isinstance(ctx_or_email, EmailContext) else ctx_or_email
    if original is None and isinstance(ctx_or_email, EmailContext):
        original = ctx_or_email.original
    marker = ProcessedEmail(
        integration=integration,
        key=key,
        message_id=(email.message_id if email else "")[:998],
        fingerprint=fingerprint,
        outcome=outcome,
        record=record,
        from_address=(email.from_address if email else "")[:998],
        subject=(email.subject if email else "")[:998],
        size=size,
        reason=reason[:10_000],
        quarantine=quarantine,
        duplicate_of_id=duplicate_of_id,
        original=original,
    )
    write_behind.save(marker)  # with the chunk's other rows when it writes them together
    return marker


def _duplicate_of(ctx: EmailContext) -> int | None:
    """The marker whose fingerprint the duplicate guard matched: the chunk read it already;
    only when the chunk cannot answer (after a failed email) is it asked for, and then only
    for a duplicate."""
    if not ctx.fingerprint:
        return None
    known, newest = ctx.chunk.newest_marker(ctx.fingerprint) if ctx.chunk else (False, None)
    if known:
        return newest
    return (
        ProcessedEmail.objects.filter(fingerprint=ctx.fingerprint)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


def _quarantine(
    *,
    integration: EmailIntegration,
    raw: bytes,
    reason: str,
    email: InboundEmail | None,
    key: str,
    size: int,
    flood_key: str = "",
    original: Original | None = None,
) -> ProcessResult:
    entry = Quarantine.objects.create(
        integration=integration,
        raw_email=raw,
        reason=reason[:10_000],
        from_address=(email.from_address if email else "")[:998],
        subject=(email.subject if email else "")[:998],
        message_id=(email.message_id if email else "")[:998],
        flood_key=flood_key[:400],
        original=original,
    )
    outcome = Outcome.FLOOD if flood_key else Outcome.QUARANTINED
    _mark(
        email,
        integration=integration,
        key=key,
        outcome=outcome,
        size=size,
        reason=reason,
        quarantine=entry,
        original=original,
    )
    return ProcessResult(Outcome.QUARANTINED, reason=reason)


def _decide(ctx: EmailContext, verdict: Verdict | None, *, key: str, size: int) -> ProcessResult:
    integration = ctx.integration
    if verdict is None:
        outcome = apply_email(ctx)
        logged = outcome
        if ctx.as_internal_note and outcome == Outcome.APPENDED:
            logged = Outcome.NOTE  # a non-participant's email kept as an internal note
        marker = _mark(
            ctx,
            integration=integration,
            key=key,
            outcome=logged,
            size=size,
            record=ctx.record,
            fingerprint=ctx.fingerprint,
            reason=_applied_reason(ctx, logged),
        )
        if ctx.chunk is not None and ctx.fingerprint:
            ctx.chunk.note_marker(ctx.fingerprint, marker)
        if ctx.chunk is not None and outcome == Outcome.CREATED:
            ctx.chunk.note_new_record(keys_counting(ctx.email.from_address))
        return ProcessResult(
            outcome, record_id=ctx.record.pk, reason=ctx.matched_by, record=ctx.record
        )
    if verdict.action == "quarantine" and ctx.flood_key:
        return _hold_flood(ctx, reason=verdict.reason, key=key, size=size)
    if verdict.action == "quarantine":
        return _quarantine(
            integration=integration,
            raw=ctx.raw,
            reason=verdict.reason,
            email=ctx.email,
            key=key,
            size=size,
            original=ctx.original,
        )
    outcome = VERDICT_OUTCOMES.get(verdict.action, Outcome.IGNORED)
    if outcome in FORWARDED_OUTCOMES:
        queue_forward_of_ignored(ctx, reason=verdict.reason)
    # A bounce links to the record of the email that bounced.
    record = ctx.record if outcome == Outcome.BOUNCE else None
    _mark(
        ctx,
        integration=integration,
        key=key,
        outcome=outcome,
        record=record,
        size=size,
        reason=verdict.reason,
        duplicate_of_id=_duplicate_of(ctx) if outcome == Outcome.DUPLICATE else None,
    )
    # A pass counts the loop guard's drops as ignored, as it always has.
    counted = Outcome.IGNORED if outcome == Outcome.LOOP else outcome
    return ProcessResult(counted, record_id=record.pk if record else None, reason=verdict.reason)


def _applied_reason(ctx: EmailContext, outcome: str) -> str:
    """Why the email went where it went, for the log: how its record was found."""
    if outcome == Outcome.CREATED:
        return "created anyway by an admin" if ctx.create_anyway else ""
    parts = [f"matched by {ctx.matched_by}" if ctx.matched_by else ""]
    if outcome == Outcome.NOTE:
        parts.append("the sender is not a participant of the record")
    return "; ".join(part for part in parts if part)


def _hold_flood(ctx: EmailContext, *, reason: str, key: str, size: int) -> ProcessResult:
    """Quarantine an email the flood limit holds, marked with its flood's key; the first
    email held of a flood (within the hour) alerts the admins, the others are only kept."""
    flood_key = ctx.flood_key
    known, held = ctx.chunk.flood_held(flood_key) if ctx.chunk else (False, False)
    if not known:
        held = flood_key in floods_held_in_window([flood_key])
    result = _quarantine(
        integration=ctx.integration,
        raw=ctx.raw,
        reason=reason,
        email=ctx.email,
        key=key,
        size=size,
        flood_key=flood_key,
        original=ctx.original,
    )
    if ctx.chunk is not None:
        # Also when the alert below reaches nobody: the next chunk tries again, not every
        # email of a flood of thousands.
        ctx.chunk.note_flood_held(flood_key)
    if not held:
        alerted = queue_flood_alert(
            integration=ctx.integration, source=source_of(flood_key), first_reason=reason
        )
        note_flood_alert(flood_key=flood_key, alerted=alerted)
    return result


def note_flood_alert(*, flood_key: str, alerted: bool) -> None:
    """Whether the flood's alert reached anyone: if not, its next held email alerts again."""
    if alerted:
        UnalertedFlood.objects.filter(flood_key=flood_key).delete()
    else:
        UnalertedFlood.objects.get_or_create(flood_key=flood_key)


def queue_size_notice(*, integration: EmailIntegration, email: InboundEmail, limit: int) -> None:
    """Tell the sender, once, that the email was too large (never an auto-responder)."""
    if not email.from_address or email.header("auto-submitted").lower() not in ("", "no"):
        return
    queue_email(
        kind=OutboxEmail.Kind.SIZE_NOTICE,
        to=[email.from_address],
        subject=f"Your email was too large: {email.subject}"[:998],
        text=(
            f"Your email “{email.subject}” could not be added to our service desk because it is "
            f"larger than {limit // (1024 * 1024)} MB. Please send it again with smaller "
            "attachments, or share large files by link."
        ),
        integration=integration if integration.outgoing_enabled else None,
    )


@dataclass(frozen=True)
class RawEmail:
    """One email to process: its bytes, and for an email over the size limit (`raw` then
    holds only its headers) that limit, so it is quarantined and the sender told."""

    raw: bytes
    oversized_limit: int | None = None
    identity: str = ""  # the server's stable name of the message, when it has one (marker_key)
    # The size as fetched, for the incoming email log (0: len(raw)); an oversized email's
    # full size, while `raw` holds less.
    size: int = 0

    @property
    def fetched_size(self) -> int:
        return max(self.size, len(self.raw))

    # An email over the size limit: the whole of it, in a temporary file the adapter wrote a
    # piece at a time; streamed to storage as its original, then removed.
    original_path: str = ""
    # The original is kept already (reprocessing a quarantined email): link it, store none.
    original_id: int | None = None

    @property
    def stores_original(self) -> bool:
        """Whether parsing stores `raw` as the original (else: the whole file, or none)."""
        return not self.original_path and self.original_id is None


class OriginalNotStored(RuntimeError):
    """The storage of originals refused a file: nothing of the chunk is acked, its emails
    stay in the mailbox for the next pass (never acked without their original)."""


# A chunk commits after this many emails or this long, whichever comes first: a shared
# transaction saves a commit per email, and a bounded one keeps SQLite's single writer lock
# (the web screens, other workers) waiting at most about this long.
CHUNK_MAX_EMAILS = 100
CHUNK_MAX_SECONDS = 1.0


def process_raw(
    *,
    integration: EmailIntegration,
    raw: bytes,
    desk_addresses: frozenset[str],
    oversized_limit: int | None = None,
    original_id: int | None = None,
) -> ProcessResult:
    """Process one email in its own transaction (`ingest_email`, reprocessing from the
    quarantine). `oversized_limit` set means `raw` holds only the headers of an email
    larger than that many bytes: it is quarantined and the sender told. `original_id`: the
    email's original is kept already (a quarantine entry's): linked, not stored again."""
    lookups = load_pass_lookups(integration=integration, desk_addresses=desk_addresses)
    (committed,) = process_chunk(
        integration=integration,
        emails=[RawEmail(raw, oversized_limit, original_id=original_id)],
        lookups=lookups,
    )
    return committed[0]


def append_to_record(
    *,
    integration: EmailIntegration,
    raw: bytes,
    record: ServiceRecord,
    lookups: PassLookups,
    original_id: int | None = None,
) -> ProcessResult:
    """Add an email to the record an admin chose (quarantine's "add to #N"), past the filters:
    an incoming message of its log like any reply, and the email's row of the incoming log.
    Raises ValueError when the email cannot be read."""
    parsed = parse(raw)
    if parsed.email is None:
        raise ValueError("the email cannot be read")
    key = marker_key(raw)
    with transaction.atomic(), batched_outbox(desk_addresses=lookups.desk_addresses):
        ctx = EmailContext(
            integration=integration,
            email=parsed.email,
            raw=raw,
            desk_addresses=lookups.desk_addresses,
            lookups=lookups,
            record=record,
            matched_by="an admin",
            # The original kept when the email arrived (the quarantine entry's).
            original=Original.objects.filter(pk=original_id).first() if original_id else None,
        )
        outcome = apply_email(ctx)
        _mark(
            ctx,
            integration=integration,
            key=key,
            outcome=outcome,
            size=len(raw),
            record=record,
            reason=f"added to #{record.pk} by an admin",
        )
    return ProcessResult(outcome, record_id=record.pk)


def process_chunk(
    *,
    integration: EmailIntegration,
    emails: Sequence[RawEmail],
    lookups: PassLookups,
    max_emails: int | None = None,
    max_seconds: float | None = None,
    parsed: Sequence[Parsed] | None = None,
    flood_released: bool = False,
    create_anyway: bool = False,
) -> Iterator[list[ProcessResult]]:
    """Process emails in shared transactions, each written together (ChunkTransaction);
    yields the results of each transaction once it has committed, in order, so the caller
    acks exactly those.

    An email that fails rolls its transaction back, which is written again with a savepoint
    per email: the failing one rolls back to its savepoint and is quarantined in the same
    transaction; the others commit. A failure of the system (SYSTEM_ERRORS, or a
    quarantine that cannot be written) rolls the whole transaction back and propagates:
    nothing of it is yielded, so nothing of it is acked.

    `parsed`: the emails parsed already (in a second process, see parse_ahead.py), in order.
    `flood_released`: an admin released these emails from a flood's quarantine (see
    EmailContext.flood_released).
    `create_anyway`: an admin asked for a record despite the filters that held the emails
    (see EmailContext.create_anyway).
    """
    max_emails = max_emails or CHUNK_MAX_EMAILS
    max_seconds = max_seconds or CHUNK_MAX_SECONDS
    keys = [marker_key(email.raw, identity=email.identity) for email in emails]
    done = processed_keys(integration=integration, keys=keys)
    if parsed is None:
        # Parsed before any transaction opens: it needs no database, and the chunk's senders
        # and fingerprints are then looked up with one query each.
        parsed = parse_all(
            [email.raw for email in emails], [email.stores_original for email in emails]
        )
    parsed = stored_originals(emails, parsed)
    outcomes = [
        None if keys[index] in done else rule_outcome_of(integration, item, lookups)
        for index, item in enumerate(parsed)
    ]
    position = 0
    originals: dict[int, Original] = {}
    while position < len(emails):
        writer = ChunkTransaction(
            integration=integration,
            emails=emails,
            keys=keys,
            parsed=parsed,
            outcomes=outcomes,
            lookups=lookups,
            start=position,
            max_emails=max_emails,
            max_seconds=max_seconds,
            flood_released=flood_released,
            create_anyway=create_anyway,
        )
        try:
            results, done, originals = writer.write(done=done, originals=originals, together=True)
        except SYSTEM_ERRORS:
            raise
        except Exception as error:
            # An email failed while the chunk was written together (no savepoints): all of
            # it rolled back; written again an email at a time, each in its savepoint, so
            # that the failing one is quarantined and the others commit.
            logger.info(
                "integration %s: a chunk written together failed (%s: %s); writing it again "
                "an email at a time",
                integration.name,
                type(error).__name__,
                str(error)[:200],
            )
            results, done, originals = writer.write(done=done, originals=originals, together=False)
        position += len(results)
        yield results


@dataclass(frozen=True)
class ChunkTransaction:
    """The emails one transaction of process_chunk writes: from `start` on, at most
    `max_emails` of them or as many as fit in `max_seconds`."""

    integration: EmailIntegration
    emails: Sequence[RawEmail]
    keys: Sequence[str]
    parsed: Sequence[Parsed]
    outcomes: Sequence[RuleOutcome | None]
    lookups: PassLookups
    start: int
    max_emails: int
    max_seconds: float
    flood_released: bool
    create_anyway: bool

    def write(
        self, *, done: set[str], originals: dict[int, Original], together: bool
    ) -> tuple[list[ProcessResult], set[str], dict[int, Original]]:
        """Commit one transaction; returns its results and, as they stand after the commit,
        the marker keys done and the originals' rows written. `together`: no savepoints,
        the message log's and the incoming log's rows inserted with one statement per
        table at the end (records.write_behind); an email that fails raises, and nothing of
        the transaction is kept (the caller writes it again with together=False). Else a
        savepoint per email, as the fallback."""
        done, originals = set(done), dict(originals)
        start, end = self.start, min(len(self.emails), self.start + self.max_emails)
        results: list[ProcessResult] = []
        deadline = time.monotonic() + self.max_seconds
        rows = write_behind.rows_written_together() if together else contextlib.nullcontext()
        with (
            transaction.atomic(),
            batched_outbox(desk_addresses=self.lookups.desk_addresses),
            rows,
        ):
            chunk = chunk_lookups(
                list(self.parsed[start:end]),
                desk_addresses=self.lookups.desk_addresses,
                integration=self.integration,
            )
            # The rows of the originals this transaction may reach, in one INSERT; rows of
            # emails it does not reach (its time ran out) commit with it and serve the next.
            todo = [
                index
                for index in range(start, end)
                if index not in originals
                and self.keys[index] not in done
                and self.parsed[index].stored is not None
            ]
            stored = [self.parsed[index].stored for index in todo]
            rows_of = original_rows(stored, integration_id=self.integration.pk)
            originals.update(zip(todo, rows_of, strict=True))
            for index in range(start, len(self.emails)):
                key = self.keys[index]
                if key in done:
                    results.append(ProcessResult(ALREADY_PROCESSED))
                else:
                    results.append(
                        _process_one(
                            self.integration,
                            self.emails[index],
                            key,
                            self.lookups,
                            self.parsed[index],
                            chunk,
                            rule_outcome=self.outcomes[index],
                            flood_released=self.flood_released,
                            create_anyway=self.create_anyway,
                            original=originals.get(index),
                            savepoint=not together,
                        )
                    )
                    done.add(key)  # the same bytes twice in one chunk: the second is done
                if len(results) >= self.max_emails or time.monotonic() > deadline:
                    break
        return [result.with_record_number() for result in results], done, originals


def stored_originals(emails: Sequence[RawEmail], parsed: Sequence[Parsed]) -> list[Parsed]:
    """Every email's original written to storage before its transaction opens: the whole
    file of an email over the size limit is streamed now (then its temporary file removed).
    A file that could not be written stops the chunk (OriginalNotStored): nothing acked."""
    result = list(parsed)
    for index, email in enumerate(emails):
        item = result[index]
        if email.original_path:
            try:
                stored = store_file(email.original_path)
            except OSError as error:
                raise OriginalNotStored(f"could not store an original: {error}") from error
            with contextlib.suppress(OSError):
                os.unlink(email.original_path)
            result[index] = Parsed(item.email, item.failure, stored=stored)
        elif item.store_failure:
            raise OriginalNotStored(f"could not store an original:\n{item.store_failure}")
    return result


def rule_outcome_of(
    integration: EmailIntegration, parsed: Parsed, lookups: PassLookups
) -> RuleOutcome | None:
    """The email rules, evaluated before the chunk's transaction opens: a pattern that takes
    its whole time budget then holds no lock (SQLite has one writer for the whole database).
    None when the email cannot open a record anyway."""
    email = parsed.email
    if email is None or email.sender_problem or not email.from_address:
        return None
    if not lookups.email_rules:
        return NO_RULES
    try:
        return evaluate_rules_for(email, integration=integration, rules=lookups.email_rules)
    except Exception:  # open_record evaluates again, in the email's savepoint, which may fail
        logger.exception("integration %s: email rules failed before the chunk", integration.name)
        return None


def chunk_lookups(
    parsed: list[Parsed], *, desk_addresses: frozenset[str], integration: EmailIntegration
) -> ChunkLookups:
    """Inside the chunk's batched_outbox: the senders' counts against the cap of automatic
    emails are read there too (each new record acknowledges its sender). Inside the chunk's
    transaction: the records its emails name are read there, as each email would."""
    emails = [item.email for item in parsed if item.email is not None]
    senders = [email.from_address for email in emails if email.from_address]
    prefetch_automatic_counts(senders)
    exempt = exempt_domains(desk_addresses)
    return load_chunk_lookups(
        flood_keys=frozenset(
            key for sender in senders for key in flood_keys(sender, exempt=exempt)
        ),
        senders=senders,
        fingerprints=[
            fingerprint(sender=email.from_address, subject=email.subject, body=email.text_body)
            for email in emails
        ],
        record_numbers=frozenset(
            number for email in emails for number in numbers_named(email, integration)
        ),
    )


def processed_keys(*, integration: EmailIntegration, keys: Sequence[str]) -> set[str]:
    """Which of these marker keys the integration has already processed: one query."""
    return set(
        ProcessedEmail.objects.filter(integration=integration, key__in=set(keys)).values_list(
            "key", flat=True
        )
    )


def _process_one(
    integration: EmailIntegration,
    item: RawEmail,
    key: str,
    lookups: PassLookups,
    parsed: Parsed,
    chunk: ChunkLookups,
    *,
    rule_outcome: RuleOutcome | None = None,
    flood_released: bool = False,
    create_anyway: bool = False,
    original: Original | None = None,
    savepoint: bool = True,
) -> ProcessResult:
    """One email in its own savepoint of the caller's transaction. `original`: the row of its
    original, written in the caller's transaction before the savepoint (an email that fails
    is quarantined with it). `savepoint=False` (a chunk written together): no savepoint, and
    what the email makes fail is raised to the caller, whose transaction then rolls back."""
    raw, oversized_limit, size = item.raw, item.oversized_limit, item.fetched_size
    email = parsed.email
    if original is None and item.original_id is not None:
        original = Original.objects.filter(pk=item.original_id).first()
    if email is None:
        return _quarantine_after_error(
            integration, raw, None, key, size=size, error=parsed.failure, original=original
        )
    outbox_mark = batch_mark()
    try:
        with (
            transaction.atomic() if savepoint else contextlib.nullcontext(),
            write_behind.files_removed_on_error(),
        ):
            if oversized_limit is not None:
                queue_size_notice(integration=integration, email=email, limit=oversized_limit)
                kept = (
                    "kept whole as its original"
                    if item.original_path and original is not None
                    else "only its headers were kept"
                )
                return _quarantine(
                    integration=integration,
                    raw=raw,
                    reason=f"larger than the {oversized_limit // (1024 * 1024)} MB limit; {kept}",
                    email=email,
                    key=key,
                    size=size,
                    original=original,
                )
            ctx = EmailContext(
                integration=integration,
                email=email,
                raw=raw,
                desk_addresses=lookups.desk_addresses,
                lookups=lookups,
                chunk=chunk,
                rule_outcome=rule_outcome,
                flood_released=flood_released,
                create_anyway=create_anyway,
                original=original,
                defects=readable_defects(email, raw),
            )
            return _decide(ctx, run_filters(ctx), key=key, size=size)
    except IntegrityError:
        if not savepoint:
            raise
        forget_rolled_back(chunk, outbox_mark)
        # Another worker committed the same email first (the marker is unique): it is done.
        if already_processed(integration=integration, key=key):
            return ProcessResult(ALREADY_PROCESSED)
        return _quarantine_after_error(integration, raw, email, key, size=size, original=original)
    except SYSTEM_ERRORS:
        raise
    except Exception:  # the email made something fail: keep it whole and go on
        if not savepoint:
            raise
        forget_rolled_back(chunk, outbox_mark)
        return _quarantine_after_error(integration, raw, email, key, size=size, original=original)


def forget_rolled_back(chunk: ChunkLookups, outbox_mark: int) -> None:
    """What the chunk noted of the rolled-back email (a user, a marker, queued emails
    and their count against the cap) no longer exists."""
    chunk.forget()
    rollback_batch_to(outbox_mark)


def _quarantine_after_error(
    integration: EmailIntegration,
    raw: bytes,
    email: InboundEmail | None,
    key: str,
    *,
    size: int,
    error: str = "",
    original: Original | None = None,
) -> ProcessResult:
    """`error`: the traceback when it was raised elsewhere (parsing, in another process);
    else the one being handled."""
    if error:
        logger.error(
            "integration %s: email quarantined after an error\n%s", integration.name, error
        )
    else:
        error = traceback.format_exc(limit=8)
        logger.exception("integration %s: email quarantined after an error", integration.name)
    try:
        with transaction.atomic():
            return _quarantine(
                integration=integration,
                raw=raw,
                reason=f"processing failed: {error}",
                email=email,
                key=key,
                size=size,
                original=original,
            )
    except DatabaseError:
        # Not even the quarantine could be written: leave the email in the mailbox.
        logger.exception("integration %s: could not quarantine; will retry", integration.name)
        raise
