"""The incoming email log: one row per email an integration fetched (ProcessedEmail, which is
also the processed marker), listed newest first with filters, and paged by keyset so a page
costs the same at row 100,000 as at row 1 (no OFFSET, no COUNT over the whole log)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

import django_filters
from django.db.models import Q, QuerySet
from django.utils import timezone

from integrations.models import EmailIntegration
from records.models import ProcessedEmail

PAGE_SIZE = 50


class IncomingLogFilter(django_filters.FilterSet):
    # One row by its id: where "duplicate of" links to.
    id = django_filters.NumberFilter(widget=django_filters.widgets.forms.HiddenInput)
    integration = django_filters.ModelChoiceFilter(
        queryset=EmailIntegration.objects.order_by("name")
    )
    outcome = django_filters.ChoiceFilter(choices=ProcessedEmail.Outcome.choices)
    sender = django_filters.CharFilter(
        field_name="from_address", lookup_expr="icontains", label="Sender contains"
    )
    subject = django_filters.CharFilter(lookup_expr="icontains", label="Subject contains")
    date_from = django_filters.DateFilter(method="filter_date_from", label="From (date)")
    date_to = django_filters.DateFilter(method="filter_date_to", label="To (date)")

    class Meta:
        model = ProcessedEmail
        fields = ["integration", "outcome"]

    def filter_date_from(self, queryset: QuerySet, _name: str, value) -> QuerySet:
        start = timezone.make_aware(datetime.combine(value, time.min))
        return queryset.filter(processed_at__gte=start)

    def filter_date_to(self, queryset: QuerySet, _name: str, value) -> QuerySet:
        end = timezone.make_aware(datetime.combine(value, time.max))
        return queryset.filter(processed_at__lte=end)


def log_rows() -> QuerySet:
    """Everything a row of the screen shows, in one query (the links' targets are ids)."""
    return ProcessedEmail.objects.select_related("integration").only(
        "id",
        "integration__name",
        "message_id",
        "outcome",
        "record_id",
        "from_address",
        "subject",
        "size",
        "reason",
        "quarantine_id",
        "original_id",
        "duplicate_of_id",
        "processed_at",
    )


@dataclass(frozen=True)
class Page:
    rows: list[ProcessedEmail]
    next_cursor: str  # "" on the last page


def encode_cursor(row: ProcessedEmail) -> str:
    return f"{row.processed_at.isoformat()}_{row.pk}"


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    stamp, _, pk = cursor.rpartition("_")
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if not pk.isdigit():
        return None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment, int(pk)


def page_of(queryset: QuerySet, *, cursor: str = "", size: int = PAGE_SIZE) -> Page:
    """The rows after `cursor` (newest first on processed_at, then id), and the cursor of the
    next page: one query of size + 1 rows, whatever the size of the log."""
    position = decode_cursor(cursor) if cursor else None
    if position is not None:
        moment, pk = position
        queryset = queryset.filter(Q(processed_at__lt=moment) | Q(processed_at=moment, id__lt=pk))
    rows = list(queryset.order_by("-processed_at", "-id")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows=rows, next_cursor=encode_cursor(rows[-1]) if more and rows else "")
