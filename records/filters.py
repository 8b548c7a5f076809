"""The records list's filters, read from the query string with django-filter (as the
incoming email log does): search, views ("my records", "unassigned"), status, priority,
assignee, group, category, overdue, and the column it is sorted by."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django.utils import timezone

from records import selectors
from records.forms import UNASSIGNED, agent_name
from records.models import AdminGroup, Category, Priority, ServiceRecord, Status, User

VIEW_CHOICES = [("", "All records"), ("mine", "My records"), ("unassigned", "Unassigned")]
OPEN_CHOICES = [("", "Open and closed"), ("open", "Open only"), ("closed", "Closed only")]


class RecordFilter(django_filters.FilterSet):
    """A value that names nothing (a deleted status, a bogus assignee) is left out, not an
    error: a bookmarked list keeps working."""

    q = django_filters.CharFilter(method="filter_query", label="Search", max_length=200)
    view = django_filters.ChoiceFilter(
        choices=VIEW_CHOICES, method="filter_view", empty_label=None, label="Show"
    )
    state = django_filters.ChoiceFilter(
        choices=OPEN_CHOICES, method="filter_state", empty_label=None, label="Open"
    )
    status = django_filters.ModelChoiceFilter(
        queryset=Status.objects.all(), empty_label="Any status"
    )
    priority = django_filters.ChoiceFilter(choices=Priority.choices, empty_label="Any priority")
    assignee = django_filters.ChoiceFilter(
        method="filter_assignee", label="Assigned admin", empty_label="Anyone"
    )
    group = django_filters.ModelChoiceFilter(
        queryset=AdminGroup.objects.all(), empty_label="Any group"
    )
    category = django_filters.ModelChoiceFilter(
        queryset=Category.objects.all(), empty_label="Any category"
    )
    overdue = django_filters.BooleanFilter(
        method="filter_overdue", label="Overdue only", widget=forms.CheckboxInput
    )
    sort = django_filters.CharFilter(method="filter_nothing", widget=forms.HiddenInput)

    class Meta:
        model = ServiceRecord
        fields: list[str] = []

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.filters["assignee"].extra["choices"] = [
            (UNASSIGNED, "Unassigned"),
            *((str(agent.pk), agent_name(agent)) for agent in selectors.agents()),
        ]
        self.form.fields["q"].widget.attrs.update(
            {"placeholder": "#123, title, requester", "type": "search"}
        )

    def filter_query(self, queryset: QuerySet, _name: str, value: str) -> QuerySet:
        return selectors.matching_query(queryset, value)

    def filter_view(self, queryset: QuerySet, _name: str, value: str) -> QuerySet:
        if value == "mine":
            return queryset.filter(assigned_admin=self.user)
        if value == "unassigned":
            return queryset.filter(assigned_admin__isnull=True)
        return queryset

    def filter_state(self, queryset: QuerySet, _name: str, value: str) -> QuerySet:
        if value == "open":
            return queryset.filter(status__is_closed=False)
        if value == "closed":
            return queryset.filter(status__is_closed=True)
        return queryset

    def filter_assignee(self, queryset: QuerySet, _name: str, value: str) -> QuerySet:
        if value == UNASSIGNED:
            return queryset.filter(assigned_admin__isnull=True)
        return queryset.filter(assigned_admin_id=int(value))

    def filter_overdue(self, queryset: QuerySet, _name: str, value: bool | None) -> QuerySet:
        if not value:
            return queryset
        return queryset.filter(Q(due_at__lt=timezone.now()) & Q(status__is_closed=False))

    def filter_nothing(self, queryset: QuerySet, _name: str, _value: str) -> QuerySet:
        return queryset  # the order is applied last, by sorted()

    def sorted(self) -> QuerySet[ServiceRecord]:
        """The filtered records in the order the list's column headers ask for."""
        sort = self.form.cleaned_data.get("sort") or selectors.DEFAULT_SORT
        return selectors.sort_records(self.qs, sort)

    @property
    def sort_key(self) -> str:
        return self.form.cleaned_data.get("sort") or selectors.DEFAULT_SORT
