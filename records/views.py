"""The agent's record screens: the list, a record's page (details and message log, reply,
change details) and attachment downloads. Views stay thin: selectors read, services decide."""

from __future__ import annotations

from typing import Any

from csp.decorators import csp_update
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from records import selectors
from records.forms import DeskSettingsForm, RecordDetailsForm, RecordSearchForm, ReplyForm
from records.models import Attachment, DeskSettings, Direction, Message, ServiceRecord
from records.originals import original_response
from records.services import DETAIL_LABELS, change_record_details, post_agent_reply

RECORDS_PER_PAGE = 50
# Only raster images are shown in the page; anything else (HTML, SVG, PDF...) is downloaded.
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}


class RecordListView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest) -> HttpResponse:
        form = RecordSearchForm(request.GET)
        records = selectors.search_records(**form.search_arguments())
        page = Paginator(records, RECORDS_PER_PAGE).get_page(request.GET.get("page"))
        context = {"form": form, "page_obj": page, "records": page.object_list}
        return render(request, "records/list.html", context)


def _get_record(pk: int) -> ServiceRecord:
    try:
        return selectors.record_for_page(pk=pk)
    except ServiceRecord.DoesNotExist:
        raise Http404("No such service record.") from None


# The message log shows sanitised email HTML (records.templatetags.records_tags): its style
# attributes (colours, fonts, tables; no url(), no position) and its embedded data: images.
# Only attributes: a <style> element and every script stay refused.
@csp_update({"style-src-attr": ["'unsafe-inline'"], "img-src": ["data:"]})
def _render_record_page(
    request: HttpRequest,
    record: ServiceRecord,
    *,
    reply_form: ReplyForm | None = None,
    details_form: RecordDetailsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context: dict[str, Any] = {
        "record": record,
        "log": selectors.message_log(record=record),
        "suppressed_emails": selectors.suppressed_emails(record=record),
        "can_change": request.user.has_perm("records.change_servicerecord"),
        "reply_form": reply_form or ReplyForm(record=record),
        "details_form": details_form or RecordDetailsForm(record=record),
    }
    return render(request, "records/detail.html", context, status=status)


class RecordDetailView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        return _render_record_page(request, _get_record(pk))


class RecordReplyView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _get_record(pk)
        form = ReplyForm(request.POST, record=record)
        if form.is_valid():
            try:
                post_agent_reply(
                    record=record,
                    author=request.user,
                    body=form.cleaned_data["body"],
                    integration_id=form.integration_id(),
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, f"Reply to {record.display_number} queued for sending.")
                return redirect("records:detail", pk=record.pk)
        return _render_record_page(request, record, reply_form=form, status=400)


class RecordDetailsView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _get_record(pk)
        form = RecordDetailsForm(request.POST, record=record)
        if not form.is_valid():
            return _render_record_page(request, record, details_form=form, status=400)
        changes = change_record_details(
            record=record,
            actor=request.user,
            status=form.cleaned_data["status"],
            assigned_admin=form.cleaned_data["assigned_admin"],
            priority=form.cleaned_data["priority"],
        )
        if changes:
            said = "; ".join(
                f"{DETAIL_LABELS.get(field, field).lower()}: {old} → {new}"
                for field, (old, new) in changes.items()
            )
            messages.success(request, f"Changed {said}.")
        else:
            messages.info(request, "Nothing changed.")
        return redirect("records:detail", pk=record.pk)


class AttachmentDownloadView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest, pk: int) -> FileResponse:
        attachment = get_object_or_404(Attachment, pk=pk)
        content_type = attachment.content_type.split(";")[0].strip().lower()
        inline = request.GET.get("inline") == "1" and content_type in INLINE_IMAGE_TYPES
        try:
            file = attachment.file.open("rb")
        except (FileNotFoundError, ValueError):
            raise Http404("The attachment's file is missing.") from None
        response = FileResponse(
            file,
            as_attachment=not inline,
            filename=attachment.filename,
            content_type=content_type if inline else "application/octet-stream",
        )
        response["X-Content-Type-Options"] = "nosniff"
        # Even if a browser were to render it, it could run nothing and load nothing.
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response


class MessageOriginalView(StaffPermissionRequiredMixin, View):
    """ "Show original": an incoming message's email exactly as it arrived (.eml), while the
    retention period keeps it."""

    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        message = get_object_or_404(
            Message.objects.select_related("original"), pk=pk, direction=Direction.INCOMING
        )
        if message.original is None:
            raise Http404("The original of this email is no longer kept.")
        return original_response(
            message.original, filename=f"record-{message.record_id}-message-{message.pk}.eml"
        )


class DeskSettingsView(StaffPermissionRequiredMixin, View):
    """Settings > Desk settings: how long originals and the incoming email log are kept."""

    def get_permission_required(self) -> tuple[str, ...]:
        if self.request.method == "POST":
            return ("records.change_desksettings",)
        return ("records.view_desksettings",)

    def get(self, request: HttpRequest) -> HttpResponse:
        form = DeskSettingsForm(instance=DeskSettings.current())
        return render(request, "records/desk_settings.html", {"form": form})

    def post(self, request: HttpRequest) -> HttpResponse:
        form = DeskSettingsForm(request.POST, instance=DeskSettings.current())
        if not form.is_valid():
            return render(request, "records/desk_settings.html", {"form": form}, status=400)
        form.save()
        messages.success(request, "Desk settings saved.")
        return redirect("desk-settings")
