"""Admins' actions on quarantined emails."""

from __future__ import annotations

from django.db import transaction

from integrations.services import addresses_read_by_incoming_integrations
from mailworker.pipeline.process import ProcessResult, marker_key, process_raw
from records.models import ProcessedEmail, Quarantine


class CannotReprocess(Exception):
    """The quarantined email cannot go through the pipeline again (its integration is gone)."""


def reprocess_quarantined(*, entry: Quarantine) -> ProcessResult:
    """Run a quarantined email through the pipeline again, e.g. after a fix or a rule change.

    The old entry goes; if the email is quarantined again, a new entry with the new reason
    takes its place.
    """
    if entry.integration is None:
        raise CannotReprocess("Its integration was deleted; download the .eml instead.")
    raw = bytes(entry.raw_email)
    with transaction.atomic():
        ProcessedEmail.objects.filter(integration=entry.integration, key=marker_key(raw)).delete()
        entry.delete()
        return process_raw(
            integration=entry.integration,
            raw=raw,
            desk_addresses=frozenset(addresses_read_by_incoming_integrations()),
        )


def download_filename(entry: Quarantine) -> str:
    return f"quarantine-{entry.pk}.eml"
