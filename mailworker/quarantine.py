"""Admins' actions on quarantined emails."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Count, Max, Min, Q, QuerySet

from integrations.models import EmailIntegration
from integrations.services import addresses_read_by_incoming_integrations
from mailworker.pipeline.lookups import PassLookups, load_pass_lookups
from mailworker.pipeline.process import (
    ProcessResult,
    RawEmail,
    append_to_record,
    marker_key,
    process_chunk,
    process_raw,
)
from records.models import Message, ProcessedEmail, Quarantine, ServiceRecord

# Held emails released per transaction: a flood of thousands commits in steps, each as
# short as a chunk of a pass, so the web screens are not kept waiting on the write lock.
RELEASE_BATCH = 100


class CannotReprocess(Exception):
    """The quarantined email cannot go through the pipeline again (its integration is gone)."""


def _forget_log_rows(entry: Quarantine, raw: bytes) -> None:
    """The email's row of the incoming log goes with its quarantine entry: the pipeline writes
    the new one. Found by its link (a Graph email's marker is keyed on its id, not its bytes)
    and by the bytes' key (rows written before the log linked its quarantine entries)."""
    ProcessedEmail.objects.filter(
        Q(key=marker_key(raw)) | Q(quarantine=entry), integration=entry.integration
    ).delete()


def reprocess_quarantined(*, entry: Quarantine) -> ProcessResult:
    """Run a quarantined email through the pipeline again, e.g. after a fix or a rule change.

    The old entry goes; if the email is quarantined again, a new entry with the new reason
    takes its place.
    """
    if entry.integration is None:
        raise CannotReprocess("Its integration was deleted; download the .eml instead.")
    raw = bytes(entry.raw_email)
    desk_addresses = frozenset(addresses_read_by_incoming_integrations())
    with transaction.atomic():
        newest = _newest_message_id()
        _forget_log_rows(entry, raw)
        entry.delete()
        result = process_raw(
            integration=entry.integration,
            raw=raw,
            desk_addresses=desk_addresses,
            original_id=entry.original_id,
        )
        _keep_arrival_time(entry, result, newest)
        return result


def create_record_anyway(*, entry: Quarantine) -> ProcessResult:
    """Reprocess past the filters that quarantined the email (sender ambiguous, DMARC, not a
    participant, automatic mail, flood limit): it opens a record, or joins the record it
    names, unless an ignore rule drops it. The record keeps the time the email arrived."""
    if entry.integration is None:
        raise CannotReprocess("Its integration was deleted; download the .eml instead.")
    integration = entry.integration
    raw = bytes(entry.raw_email)
    lookups = load_pass_lookups(integration=integration)
    with transaction.atomic():
        newest = _newest_message_id()
        _forget_log_rows(entry, raw)
        entry.delete()
        (results,) = process_chunk(
            integration=integration,
            emails=[RawEmail(raw, original_id=entry.original_id)],
            lookups=lookups,
            flood_released=bool(entry.flood_key),
            create_anyway=True,
        )
        result = results[0]
        _keep_arrival_time(entry, result, newest)
        return result


def add_to_record(*, entry: Quarantine, record: ServiceRecord) -> ProcessResult:
    """Add the quarantined email to the record the admin named, as an incoming message of its
    log at the time the email arrived; the quarantine entry goes."""
    if entry.integration is None:
        raise CannotReprocess("Its integration was deleted; download the .eml instead.")
    integration = entry.integration
    raw = bytes(entry.raw_email)
    lookups = load_pass_lookups(integration=integration)
    with transaction.atomic():
        newest = _newest_message_id()
        _forget_log_rows(entry, raw)
        entry.delete()
        try:
            result = append_to_record(
                integration=integration,
                raw=raw,
                record=record,
                lookups=lookups,
                original_id=entry.original_id,
            )
        except ValueError as exc:
            raise CannotReprocess(f"Cannot add it: {exc}.") from exc
        _keep_arrival_time(entry, result, newest)
        return result


def _newest_message_id() -> int:
    return Message.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _keep_arrival_time(
    entry: Quarantine, result: ProcessResult, newest: int, *, original_id: int | None = None
) -> None:
    """The messages this email added (and the record it opened) are dated when it arrived,
    not when an admin let it through; quarantined again, its new entry is too. Its messages
    are those newer than `newest`, or, where several emails went through at once (a flood
    released), those linked to its original."""
    if result.outcome == ProcessedEmail.Outcome.QUARANTINED:
        Quarantine.objects.filter(
            pk__in=ProcessedEmail.objects.filter(
                integration_id=entry.integration_id, key=marker_key(bytes(entry.raw_email))
            ).values("quarantine_id")
        ).update(received_at=entry.received_at)
        return
    if result.record_id is None:
        return
    messages = Message.objects.filter(record_id=result.record_id, id__gt=newest)
    if original_id is not None:
        messages = messages.filter(original_id=original_id)
    messages.update(created_at=entry.received_at)
    if result.outcome == ProcessedEmail.Outcome.CREATED:
        ServiceRecord.objects.filter(pk=result.record_id).update(created_at=entry.received_at)


def download_filename(entry: Quarantine) -> str:
    return f"quarantine-{entry.pk}.eml"


def floods() -> QuerySet:
    """The floods held in the quarantine, newest first: key, count, first and last held."""
    return (
        Quarantine.objects.exclude(flood_key="")
        .values("flood_key")
        .annotate(count=Count("pk"), first=Min("received_at"), last=Max("received_at"))
        .order_by("-last")
    )


@dataclass
class FloodRelease:
    """What releasing a flood did: the outcomes of its emails, and how many could not go
    through the pipeline again (their integration was deleted) and stay held."""

    outcomes: Counter = field(default_factory=Counter)
    left_held: int = 0

    @property
    def released(self) -> int:
        return sum(self.outcomes.values())


def release_flood(*, flood_key: str) -> FloodRelease:
    """Process every email held by this flood as if the flood limit did not apply: each
    opens its record (or whatever the other filters decide), and no acknowledgement goes
    to its sender, whose address a flood may well have forged."""
    report = FloodRelease()
    if not flood_key:
        return report
    held = Quarantine.objects.filter(flood_key=flood_key)
    report.left_held = held.filter(integration__isnull=True).count()
    pks = list(
        held.filter(integration__isnull=False)
        .order_by("received_at", "pk")
        .values_list("pk", flat=True)
    )
    desk_addresses = frozenset(addresses_read_by_incoming_integrations())
    lookups: dict[int, PassLookups] = {}
    for start in range(0, len(pks), RELEASE_BATCH):
        batch = pks[start : start + RELEASE_BATCH]
        integrations = list(
            EmailIntegration.objects.filter(
                pk__in=Quarantine.objects.filter(pk__in=batch).values("integration_id")
            )
        )
        for integration in integrations:
            if integration.pk not in lookups:
                # Outside the transaction: it may create the default statuses.
                lookups[integration.pk] = load_pass_lookups(
                    integration=integration, desk_addresses=desk_addresses
                )
        by_pk = {integration.pk: integration for integration in integrations}
        with transaction.atomic():
            # Locked, and read again: an admin releasing the same flood at the same moment
            # waits here and then finds these gone.
            entries = list(
                Quarantine.objects.select_for_update()
                .filter(pk__in=batch, flood_key=flood_key)
                .order_by("received_at", "pk")
            )
            for integration_id in dict.fromkeys(entry.integration_id for entry in entries):
                if integration_id not in by_pk:  # deleted meanwhile: the entry stays held
                    report.left_held += 1
                    continue
                group = [entry for entry in entries if entry.integration_id == integration_id]
                _release_group(
                    group,
                    integration=by_pk[integration_id],
                    lookups=lookups[integration_id],
                    report=report,
                )
    return report


def _release_group(
    entries: list[Quarantine],
    *,
    integration: EmailIntegration,
    lookups: PassLookups,
    report: FloodRelease,
) -> None:
    raws = [bytes(entry.raw_email) for entry in entries]
    ProcessedEmail.objects.filter(
        Q(key__in=[marker_key(raw) for raw in raws]) | Q(quarantine__in=entries),
        integration=integration,
    ).delete()
    Quarantine.objects.filter(pk__in=[entry.pk for entry in entries]).delete()
    newest = _newest_message_id()
    for results in process_chunk(
        integration=integration,
        emails=[
            RawEmail(raw, original_id=entry.original_id)
            for raw, entry in zip(raws, entries, strict=True)
        ],
        lookups=lookups,
        max_emails=len(raws),
        flood_released=True,
    ):
        report.outcomes.update(result.outcome for result in results)
        done, entries = entries[: len(results)], entries[len(results) :]
        for entry, result in zip(done, results, strict=True):
            # Its messages are told apart by their original (kept since issue 13); an entry
            # held before that is dated only when it went through alone.
            if entry.original_id is not None or len(raws) == 1:
                _keep_arrival_time(entry, result, newest, original_id=entry.original_id)
