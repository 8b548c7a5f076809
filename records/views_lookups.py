"""Settings > Statuses, Groups, Categories: the lists records are sorted by. One set of
views serves the three, each described by a Lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Model
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from records import lookups
from records.forms_users import AdminGroupForm, CategoryForm, StatusForm
from records.models import AdminGroup, Category, Status


@dataclass(frozen=True)
class Lookup:
    slug: str  # in URLs: /settings/<slug>/
    model: type[Model]
    form: type[ModelForm]
    title: str  # "Statuses"
    noun: str  # "status"
    intro: str

    def permission(self, action: str) -> str:
        return f"records.{action}_{self.model._meta.model_name}"


LOOKUPS = {
    lookup.slug: lookup
    for lookup in (
        Lookup(
            "statuses",
            Status,
            StatusForm,
            "Statuses",
            "status",
            "Every record has one status. Closed statuses mean the record is done. New records "
            "get “New” (else the first open status).",
        ),
        Lookup(
            "groups",
            AdminGroup,
            AdminGroupForm,
            "Groups",
            "group",
            "Teams of admins and agents that records are routed to (by an email rule or by "
            "hand). Members hear about their group's records when notifications go to groups.",
        ),
        Lookup(
            "categories",
            Category,
            CategoryForm,
            "Categories",
            "category",
            "What a record is about (set by an email rule or by hand).",
        ),
    )
}


class LookupMixin(StaffPermissionRequiredMixin):
    action = "view"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        self.lookup = LOOKUPS[kwargs.pop("lookup")]
        return super().dispatch(request, *args, **kwargs)

    def get_permission_required(self) -> tuple[str, ...]:
        action = self.action if self.request.method == "POST" else "view"
        return tuple({self.lookup.permission("view"), self.lookup.permission(action)})

    def context(self, **extra: Any) -> dict[str, Any]:
        return {"lookup": self.lookup, "lookups": LOOKUPS.values(), **extra}


class LookupListView(LookupMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        model = self.lookup.model
        # An aggregate drops Meta.ordering (Django's rule for GROUP BY): ask for it again.
        rows = model.objects.annotate(record_count=Count("records", distinct=True)).order_by(
            *model._meta.ordering
        )
        if self.lookup.model is AdminGroup:
            rows = rows.prefetch_related("members")
        return render(request, "records/lookups/list.html", self.context(rows=rows))


class LookupFormView(LookupMixin, View):
    """Create (no pk) or edit (pk)."""

    def get_permission_required(self) -> tuple[str, ...]:
        self.action = "change" if "pk" in self.kwargs else "add"
        return super().get_permission_required()

    def _instance(self, pk: int | None) -> Model | None:
        return get_object_or_404(self.lookup.model, pk=pk) if pk is not None else None

    def _render(self, request: HttpRequest, form: ModelForm, status: int = 200) -> HttpResponse:
        return render(
            request,
            "records/lookups/form.html",
            self.context(form=form, row=form.instance),
            status=status,
        )

    def get(self, request: HttpRequest, pk: int | None = None) -> HttpResponse:
        return self._render(request, self.lookup.form(instance=self._instance(pk)))

    def post(self, request: HttpRequest, pk: int | None = None) -> HttpResponse:
        form = self.lookup.form(request.POST, instance=self._instance(pk))
        if not form.is_valid():
            return self._render(request, form, status=400)
        row = form.save()
        messages.success(request, f"{self.lookup.noun.capitalize()} “{row}” saved.")
        return redirect("lookups:list", lookup=self.lookup.slug)


class LookupDeleteView(LookupMixin, View):
    action = "delete"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        row = get_object_or_404(self.lookup.model, pk=pk)
        context = self.context(row=row, **lookups.deletion_consequences(row))
        return render(request, "records/lookups/confirm_delete.html", context)

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        row = get_object_or_404(self.lookup.model, pk=pk)
        try:
            lookups.delete_lookup(row)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("lookups:list", lookup=self.lookup.slug)
        messages.success(request, f"{self.lookup.noun.capitalize()} “{row}” deleted.")
        return redirect("lookups:list", lookup=self.lookup.slug)
