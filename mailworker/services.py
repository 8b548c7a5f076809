"""Services of the mail engine that do not belong to the pipeline or the outbox."""

from __future__ import annotations

from django.utils import timezone

from mailworker.models import WorkerHeartbeat


def record_worker_heartbeat(*, hostname: str) -> WorkerHeartbeat:
    heartbeat, _created = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"beat_at": timezone.now()}
    )
    return heartbeat
