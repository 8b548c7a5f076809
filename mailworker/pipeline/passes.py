"""A pass over one integration's mailbox: fetch a batch, process each email (each commits on
its own), ack what was committed, repeat until the mailbox is empty.

The ack always follows the commit: a crash between the two leaves the message in the
mailbox, and the next pass recognises it by its processed marker and only acks it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.health import note_failure, note_success
from mailworker.mailboxes.base import DEFAULT_BATCH_SIZE, Mailbox, MailboxError
from mailworker.mailboxes.factory import open_mailbox
from mailworker.pipeline.process import ALREADY_PROCESSED, ProcessResult, process_raw

logger = logging.getLogger(__name__)


@dataclass
class PassReport:
    integration: str
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def fetched(self) -> int:
        return sum(self.counts.values())

    def count(self, result: ProcessResult) -> None:
        self.counts[result.outcome] += 1

    def summary(self) -> str:
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
    now = timezone.now()
    fields = {"last_polled_at": now}
    if report.failed:
        error = "; ".join(report.errors)[:10_000]
        fields |= {"last_error": error, "last_error_at": now}
    else:
        fields |= {"last_success_at": now, "last_error": ""}
    EmailIntegration.objects.filter(pk=integration.pk).update(**fields)
    try:
        if report.failed:
            note_failure(integration=integration, direction="fetch email", error=error)
        else:
            note_success(integration=integration)
    except Exception:  # the database is down too: the pass report still says what failed
        logger.exception("integration %s: could not record the pass", integration.name)


def drain_mailbox(
    *,
    integration: EmailIntegration,
    mailbox: Mailbox,
    report: PassReport,
    batch_size: int,
) -> None:
    desk_addresses = frozenset(addresses_read_by_incoming_integrations())
    limit = max_message_bytes()
    seen: set[str] = set()
    while True:
        batch = list(mailbox.fetch(limit=batch_size))
        if not batch or all(message.uid in seen for message in batch):
            # Empty, or the server keeps returning what we acked: stop rather than spin.
            return
        done: list[str] = []
        try:
            for message in batch:
                result = process_raw(
                    integration=integration,
                    raw=message.raw,
                    desk_addresses=desk_addresses,
                    oversized_limit=limit if message.oversized else None,
                )
                report.count(result)
                done.append(message.uid)
                seen.add(message.uid)
        finally:
            # Everything in `done` has committed; ack it even when a later email failed.
            if done:
                mailbox.ack(done)
        if len(batch) < batch_size:
            return


def run_pass(
    *,
    integration: EmailIntegration,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mailbox_factory: Callable[[EmailIntegration], Mailbox] = open_mailbox,
) -> PassReport:
    """Import everything waiting in the integration's mailbox. Never raises for a mailbox
    or email problem: the report says what failed."""
    report = PassReport(integration=integration.name)
    started = time.monotonic()
    try:
        with mailbox_factory(integration) as mailbox:
            drain_mailbox(
                integration=integration, mailbox=mailbox, report=report, batch_size=batch_size
            )
    except MailboxError as exc:
        report.errors.append(str(exc))
    except Exception as exc:  # the database, or a bug: this integration fails, others go on
        logger.exception("integration %s: pass failed", integration.name)
        report.errors.append(f"{type(exc).__name__}: {exc}")
    report.seconds = time.monotonic() - started
    record_poll(integration, report)
    logger.log(logging.WARNING if report.failed else logging.INFO, "fetchmail %s", report.summary())
    return report
