"""Reads of integrations that more than one part of the desk needs alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from integrations.models import EmailIntegration


def sending_integrations() -> list[EmailIntegration]:
    """The integrations that send email, by name."""
    return list(EmailIntegration.objects.filter(outgoing_enabled=True).order_by("name", "pk"))


def sending_integration(
    *, record: Any = None, choices: Sequence[EmailIntegration] | None = None
) -> EmailIntegration | None:
    """Which integration sends an email about `record` (None: a system email): the record's
    own integration when it sends, else the default one, else the oldest that sends. The one
    rule for the outbox and for the agent's reply form. `choices`: the sending integrations,
    when the caller has them already."""
    if choices is None:
        choices = sending_integrations()
    by_pk = {integration.pk: integration for integration in choices}
    source_id = getattr(record, "source_integration_id", None)
    if source_id in by_pk:
        return by_pk[source_id]
    default = next((integration for integration in choices if integration.is_default), None)
    return default or min(choices, key=lambda integration: integration.pk, default=None)
