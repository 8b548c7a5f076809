"""A pass over one integration's mailbox: fetch a batch, process it chunk by chunk (a shared
transaction with a savepoint per email), ack what each transaction committed, repeat until
the mailbox is empty.

The ack always follows the commit: a crash between the two leaves the message in the
mailbox, and the next pass recognises it by its processed marker and only acks it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings

from integrations.models import EmailIntegration
from mailworker.locks import integration_lock
from mailworker.mailboxes.base import DEFAULT_BATCH_SIZE, FetchedMessage, Mailbox, MailboxError
from mailworker.mailboxes.factory import open_mailbox
from mailworker.pipeline import parse_ahead, process
from mailworker.pipeline.lookups import load_pass_lookups
from mailworker.pipeline.parse_ahead import Parsed, Parsing
from mailworker.pipeline.process import (
    ALREADY_PROCESSED,
    ProcessResult,
    RawEmail,
    process_chunk,
)
from mailworker.status import note_failure, note_poll

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassBudget:
    """How much one pass may take before it stops and lets other mailboxes' passes run
    (its continuation is queued behind them): None, no limit (`manage.py fetchmail`)."""

    max_emails: int | None = None
    max_seconds: float | None = None

    def spent(self, *, emails: int, started: float) -> bool:
        if self.max_emails is not None and emails >= self.max_emails:
            return True
        return self.max_seconds is not None and time.monotonic() - started >= self.max_seconds


UNBOUNDED = PassBudget()


@dataclass
class PassReport:
    integration: str
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Another pass over the same mailbox held the lock: this one did nothing.
    skipped: bool = False
    # The pass stopped at its budget with emails left: a continuation is due at once.
    more: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def fetched(self) -> int:
        return sum(self.counts.values())

    def count(self, result: ProcessResult) -> None:
        self.counts[result.outcome] += 1

    def log_fields(self, *, integration_id: int) -> dict[str, object]:
        c = self.counts
        return {
            "integration_id": integration_id,
            "integration": self.integration,
            "status": "skipped" if self.skipped else "failed" if self.failed else "ok",
            "fetched": self.fetched,
            "created": c["created"],
            "appended": c["appended"],
            "ignored": c["ignored"],
            "duplicates": c["duplicate"],
            "quarantined": c["quarantined"],
            "already_processed": c[ALREADY_PROCESSED],
            "errors": len(self.errors),
            "duration_ms": round(self.seconds * 1000),
            "error": "; ".join(self.errors)[:500],
        }

    def summary(self) -> str:
        if self.skipped:
            return f"{self.integration}: skipped, another pass over this mailbox is running"
        c = self.counts
        line = (
            f"{self.integration}: fetched {self.fetched}, created {c['created']}, updated "
            f"{c['appended']}, ignored {c['ignored']}, duplicates {c['duplicate']}, quarantined "
            f"{c['quarantined']}, already processed {c[ALREADY_PROCESSED]}, errors "
            f"{len(self.errors)} ({self.seconds:.2f} s)"
        )
        if self.errors:
            line += " - " + "; ".join(self.errors)
        return line


def max_message_bytes() -> int:
    return settings.MAX_INCOMING_EMAIL_BYTES


def record_poll(integration: EmailIntegration, report: PassReport) -> None:
    error = "; ".join(report.errors)[:10_000] if report.failed else None
    note_poll(integration=integration, error=error, continues=report.more)
    if error is None:
        return  # note_poll ended the streak of failures too
    try:
        note_failure(integration=integration, direction="fetch email", error=error)
    except Exception:  # the database is down too: the pass report still says what failed
        logger.exception("integration %s: could not record the pass", integration.name)


def drain_mailbox(
    *,
    integration: EmailIntegration,
    mailbox: Mailbox,
    report: PassReport,
    batch_size: int,
    budget: PassBudget = UNBOUNDED,
) -> None:
    """Fetch, process and ack until the mailbox is empty, or the budget is spent (then
    `report.more` is set).

    Messages are taken from the mailbox a chunk at a time (at most CHUNK_MAX_EMAILS, or
    CHUNK_MAX_BYTES of them), so memory does not grow with the batch size or the size of
    the emails; each chunk commits in shared transactions (see process_chunk) and what a
    transaction committed is acked right after its commit. While a chunk is written, the
    next one is fetched and parsed in a second process (parse_ahead.py): at most two
    chunks are held at once.
    """
    limit = max_message_bytes()
    seen: set[str] = set()
    started = time.monotonic()
    lookups = None  # read at the first email: a pass that finds nothing new costs no query

    def write(chunk: list[FetchedMessage], parsed: list[Parsed]) -> None:
        nonlocal lookups
        if lookups is None:
            lookups = load_pass_lookups(integration=integration)
        emails = [
            RawEmail(
                message.raw,
                limit if message.oversized else None,
                message.identity,
                size=message.size,
                original_path=message.original_path,
            )
            for message in chunk
        ]
        acked = 0
        for results in process_chunk(
            integration=integration, emails=emails, lookups=lookups, parsed=parsed
        ):
            committed = chunk[acked : acked + len(results)]
            acked += len(results)
            for result in results:
                report.count(result)
            seen.update(message.uid for message in committed)
            mailbox.ack([message.uid for message in committed])

    with parse_ahead.parser() as parser:
        while True:
            fetched = 0
            anything_new = False
            waiting: tuple[list[FetchedMessage], Parsing] | None = None
            batch = mailbox.fetch(limit=batch_size)
            first_of_batch = True
            for chunk in fetched_chunks(batch, first_max_emails=FIRST_CHUNK_MAX_EMAILS):
                fetched += len(chunk)
                anything_new = anything_new or any(message.uid not in seen for message in chunk)
                raws = [message.raw for message in chunk]
                # The original of each email is stored as it is parsed; an email over the
                # size limit has its whole original streamed to storage by process_chunk.
                keep = [not message.original_path for message in chunk]
                if sum(map(len, raws)) >= PARSE_AHEAD_MAX_BYTES:
                    # Large emails: one chunk at a time, parsed here. Parsing ahead would hold
                    # a second copy of each (sent to the other process and back), and their
                    # time goes to decoding, not to writes it could overlap with.
                    if waiting is not None:
                        write(waiting[0], parser.result(waiting[1]))
                        waiting = None
                    write(chunk, parse_ahead.parse_all(raws, keep))
                else:
                    # A batch's first chunk is parsed here: nothing waits to be written
                    # meanwhile, and a small mailbox's pass never forks the parse process.
                    parsing = parser.submit(raws, keep, here=first_of_batch)
                    if waiting is not None:
                        write(waiting[0], parser.result(waiting[1]))
                    waiting = (chunk, parsing)
                    del parsing
                first_of_batch = False
                # Let this chunk's bytes go once it is written, before the next is fetched.
                del chunk, raws
            if waiting is not None:
                write(waiting[0], parser.result(waiting[1]))
                waiting = None
            if not fetched or not anything_new or fetched < batch_size:
                # Empty, or the server keeps returning what we acked (stop rather than spin),
                # or the last batch was not full.
                return
            if budget.spent(emails=len(seen), started=started):
                report.more = True
                return


CHUNK_MAX_BYTES = 16 * 1024 * 1024
# A chunk this large is parsed in the pass's own process, without looking ahead.
PARSE_AHEAD_MAX_BYTES = 4 * 1024 * 1024


# The first chunk of a batch: nothing is written while it is parsed (the pipeline is
# empty), so a small one gets the writes going sooner (a full one left the pass idle for
# the time of a hundred parses at every batch); each next one may be twice as large, as
# writing an email takes about twice as long as parsing it.
FIRST_CHUNK_MAX_EMAILS = 20


def fetched_chunks(
    messages: Iterable[FetchedMessage],
    *,
    max_emails: int | None = None,
    max_bytes: int | None = None,
    first_max_emails: int | None = None,
) -> Iterator[list[FetchedMessage]]:
    """Group fetched messages into chunks of `max_emails` messages (when `first_max_emails`
    is given, the first one of that many, each next one twice as many as the one before
    until `max_emails`), or fewer once they hold `max_bytes` of raw bytes. A
    chunk is handed on as soon as it is full, before the next message is pulled from the
    mailbox: a large email is never held while another one is processed."""
    max_emails = max_emails or process.CHUNK_MAX_EMAILS
    max_bytes = max_bytes or CHUNK_MAX_BYTES
    limit = min(first_max_emails or max_emails, max_emails)
    chunk: list[FetchedMessage] = []
    size = 0
    for message in messages:
        chunk.append(message)
        size += len(message.raw)
        if len(chunk) >= limit or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
            limit = min(limit * 2, max_emails)
    if chunk:
        yield chunk


def run_pass(
    *,
    integration: EmailIntegration,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mailbox_factory: Callable[[EmailIntegration], Mailbox] = open_mailbox,
    budget: PassBudget = UNBOUNDED,
) -> PassReport:
    """Import everything waiting in the integration's mailbox. Never raises for a mailbox
    or email problem: the report says what failed.

    Only one pass per integration runs at a time (see mailworker.locks): when another holds
    the lock, this one returns at once with `skipped` set, and records nothing.
    """
    report = PassReport(integration=integration.name)
    started = time.monotonic()
    with integration_lock(integration.pk) as taken:
        if not taken:
            report.skipped = True
            log_pass(integration, report)
            return report
        try:
            with mailbox_factory(integration) as mailbox:
                drain_mailbox(
                    integration=integration,
                    mailbox=mailbox,
                    report=report,
                    batch_size=min(batch_size, budget.max_emails or batch_size),
                    budget=budget,
                )
        except MailboxError as exc:
            report.errors.append(str(exc))
        except Exception as exc:  # the database, or a bug: this integration fails, others go on
            logger.exception("integration %s: pass failed", integration.name)
            report.errors.append(f"{type(exc).__name__}: {exc}")
        report.seconds = time.monotonic() - started
        record_poll(integration, report)
    log_pass(integration, report)
    return report


def log_pass(integration: EmailIntegration, report: PassReport) -> None:
    """One line per pass per integration, in logfmt (`key=value`), so log collectors can
    index the counts; the same values ride along as `extra` for JSON formatters."""
    fields = report.log_fields(integration_id=integration.pk)
    line = " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())
    level = logging.WARNING if report.failed else logging.INFO
    logger.log(level, "mail pass %s", line, extra={"mail_pass": fields})


def logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(character in text for character in ' "=\\\n'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
