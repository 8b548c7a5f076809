"""The quarantine screens: the mail engine's own views (see DESIGN.md)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View
from django.views.generic import ListView

from integrations.views import StaffPermissionRequiredMixin
from mailworker.parsing import parse_email
from mailworker.quarantine import CannotReprocess, download_filename, reprocess_quarantined
from records.models import Quarantine


class QuarantineListView(StaffPermissionRequiredMixin, ListView):
    permission_required = "records.view_quarantine"
    template_name = "mailworker/quarantine_list.html"
    context_object_name = "entries"
    paginate_by = 50

    def get_queryset(self):
        return Quarantine.objects.select_related("integration").defer("raw_email")


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
        entry = get_object_or_404(Quarantine, pk=pk)
        response = HttpResponse(bytes(entry.raw_email), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="{download_filename(entry)}"'
        return response


class QuarantineReprocessView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_quarantine"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        entry = get_object_or_404(Quarantine, pk=pk)
        try:
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
