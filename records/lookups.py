"""Services of Settings > Statuses, Groups, Categories: what deleting one would change, and
deleting it (a status that records still have is refused: a record always has a status)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model

from integrations.models import EmailIntegration
from records.models import Status

NUMBERS_SHOWN = 10


def _numbers(row: Model) -> tuple[int, list[int]]:
    """How many records use `row`, and the first numbers of them."""
    records = row.records.order_by("pk")
    return records.count(), list(records.values_list("pk", flat=True)[:NUMBERS_SHOWN])


def _said(count: int, numbers: list[int]) -> str:
    listed = ", ".join(f"#{number}" for number in numbers)
    more = f" and {count - len(numbers)} more" if count > len(numbers) else ""
    return f"{listed}{more}"


def deletion_consequences(row: Model) -> dict[str, Any]:
    """For the confirmation page: the records that use `row` and, for a status, the
    integrations that set it on replies."""
    count, numbers = _numbers(row)
    consequences: dict[str, Any] = {
        "record_count": count,
        "record_numbers": _said(count, numbers),
        "refused": isinstance(row, Status) and count > 0,
    }
    if isinstance(row, Status):
        consequences["integrations"] = list(
            EmailIntegration.objects.filter(change_status_to=row).values_list("name", flat=True)
        )
    return consequences


@transaction.atomic
def delete_lookup(row: Model) -> None:
    """Delete a status, group or category. Records lose their group or category; a status
    still in use is refused with the records that use it (ValidationError)."""
    if isinstance(row, Status):
        # Lock the status so that no record takes it between the count and the delete.
        Status.objects.select_for_update().filter(pk=row.pk).first()
        count, numbers = _numbers(row)
        if count:
            records = "record uses" if count == 1 else f"{count} records use"
            raise ValidationError(
                f"“{row}” cannot be deleted: {records} it ({_said(count, numbers)}). Give "
                "them another status first (or rename this one)."
            )
    row.delete()
