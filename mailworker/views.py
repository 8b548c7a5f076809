"""The quarantine screens: the mail engine's own views (see DESIGN.md)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View
from django.views.generic import ListView

from integrations.views import StaffPermissionRequiredMixin
from mailworker.incoming_log import IncomingLogFilter, log_rows, page_of
from mailworker.parsing import parse_email
from mailworker.quarantine import (
    CannotReprocess,
    add_to_record,
    create_record_anyway,
    download_filename,
    floods,
    release_flood,
    reprocess_quarantined,
)
from records.models import Quarantine
from records.originals import original_response
from records.selectors import existing_records


class QuarantineListView(StaffPermissionRequiredMixin, ListView):
    permission_required = "records.view_quarantine"
    template_name = "mailworker/quarantine_list.html"
    context_object_name = "entries"
    paginate_by = 50

    def get_queryset(self):
        """The emails of one flood (?flood=<key>), else every email held for another
        reason: a flood of hundreds shows as one line of the floods table instead."""
        entries = Quarantine.objects.select_related("integration").defer("raw_email")
        return entries.filter(flood_key=self.request.GET.get("flood", ""))

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["floods"] = floods()
        context["flood"] = self.request.GET.get("flood", "")
        return context


class QuarantineDetailView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_quarantine"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        entry = get_object_or_404(Quarantine, pk=pk)
        email = parse_email(bytes(entry.raw_email))
        context: dict[str, Any] = {"entry": entry, "email": email, "size": len(entry.raw_email)}
        return render(request, "mailworker/quarantine_detail.html", context)


class QuarantineDownloadView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_quarantine"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        entry = get_object_or_404(Quarantine.objects.select_related("original"), pk=pk)
        if entry.original is not None:
            # The whole email as it arrived (raw_email may hold only the headers of an
            # email over the size limit).
            return original_response(entry.original, filename=download_filename(entry))
        response = HttpResponse(bytes(entry.raw_email), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="{download_filename(entry)}"'
        return response


class QuarantineReprocessView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_quarantine"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        """`how`: "" through the filters again, "create" a record anyway (past the filters
        that held it), "add" to the record numbered `record`."""
        entry = get_object_or_404(Quarantine, pk=pk)
        how = request.POST.get("how", "")
        try:
            if how == "add":
                number = request.POST.get("record", "").strip().lstrip("#")
                # A merged record's number adds to the record it was merged into.
                record = (
                    existing_records(numbers=[int(number)]).get(int(number))
                    if number.isdigit() and len(number) < 13
                    else None
                )
                if record is None:
                    messages.error(request, f"There is no record #{number or '?'}.")
                    return redirect("quarantine:detail", pk=pk)
                result = add_to_record(entry=entry, record=record)
            elif how == "create":
                result = create_record_anyway(entry=entry)
            else:
                result = reprocess_quarantined(entry=entry)
        except CannotReprocess as exc:
            messages.error(request, f"Cannot reprocess: {exc}")
            return redirect("quarantine:detail", pk=pk)
        where = f" (#{result.record_id})" if result.record_id else ""
        messages.success(request, f"Reprocessed: {result.outcome}{where}. {result.reason}".strip())
        return redirect("quarantine:list")


class QuarantineDeleteView(StaffPermissionRequiredMixin, View):
    permission_required = "records.delete_quarantine"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        get_object_or_404(Quarantine, pk=pk).delete()
        messages.success(request, "Quarantined email deleted.")
        return redirect("quarantine:list")


class QuarantineReleaseFloodView(StaffPermissionRequiredMixin, View):
    """Release all: every email a flood holds opens its record, unacknowledged."""

    permission_required = "records.change_quarantine"

    def post(self, request: HttpRequest) -> HttpResponse:
        flood_key = request.POST.get("flood_key", "")
        if not Quarantine.objects.filter(flood_key=flood_key).exclude(flood_key="").exists():
            messages.error(request, "That flood is no longer in the quarantine.")
            return redirect("quarantine:list")
        report = release_flood(flood_key=flood_key)
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in report.outcomes.items())
        text = f"Released {report.released} emails of the flood: {outcomes or 'none'}."
        if report.left_held:
            text += f" {report.left_held} stay held: their integration was deleted."
        messages.success(request, text)
        return redirect("quarantine:list")


class IncomingLogView(StaffPermissionRequiredMixin, View):
    """Every email the integrations fetched and what became of it, newest first, filtered
    (integration, outcome, sender, subject, dates) and paged by keyset (`?after=`)."""

    permission_required = "records.view_processedemail"

    def get(self, request: HttpRequest) -> HttpResponse:
        filters = IncomingLogFilter(request.GET or None, queryset=log_rows())
        if not filters.is_bound:
            queryset = log_rows()
        elif filters.is_valid():
            queryset = filters.qs
        else:  # e.g. an integration since deleted: nothing matches, the form says why
            queryset = log_rows().none()
        page = page_of(queryset, cursor=request.GET.get("after", ""))
        query = request.GET.copy()
        query.pop("after", None)
        context: dict[str, Any] = {
            "filter": filters,
            "rows": page.rows,
            "next_cursor": page.next_cursor,
            "query": query.urlencode(),
            "paged": bool(request.GET.get("after")),
        }
        return render(request, "mailworker/incoming_log.html", context)
