"""Reads of records that are more than a `.get()`."""

from __future__ import annotations

from collections.abc import Iterable

from records.models import Message, ServiceRecord


def record_by_message_ids(*, message_ids: Iterable[str]) -> ServiceRecord | None:
    """The record whose message log holds one of these Message-IDs (the newest wins)."""
    ids = [message_id for message_id in message_ids if message_id]
    if not ids:
        return None
    message = (
        Message.objects.filter(message_id__in=ids[-100:])
        .select_related("record")
        .order_by("-id")
        .first()
    )
    return message.record if message else None


def existing_records(*, numbers: Iterable[int]) -> dict[int, ServiceRecord]:
    numbers = list(numbers)
    return {record.pk: record for record in ServiceRecord.objects.filter(pk__in=numbers)}
