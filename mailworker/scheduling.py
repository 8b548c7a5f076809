"""Which integrations are due for a pass. (Locks and back-off belong to the workers issue;
until then overlapping passes are safe because the processed marker is unique.)"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.pipeline.passes import PassReport, run_pass


def due_integration_ids() -> list[int]:
    now = timezone.now()
    due = []
    for integration in EmailIntegration.objects.filter(incoming_enabled=True).only(
        "pk", "last_polled_at", "poll_interval_seconds", "incoming_protocol"
    ):
        if integration.uses_oauth:
            continue  # OAuth 2.0 mailboxes are not supported yet
        last = integration.last_polled_at
        if last is None or now - last >= timedelta(seconds=integration.poll_interval_seconds):
            due.append(integration.pk)
    return due


def poll_integration_now(*, integration_id: int) -> PassReport | None:
    integration = EmailIntegration.objects.filter(pk=integration_id, incoming_enabled=True).first()
    if integration is None:
        return None
    return run_pass(integration=integration)
