"""The agent's record screens: the list, a record's page (details and message log, reply,
change details) and attachment downloads. Views stay thin: selectors read, services decide."""

from __future__ import annotations

from typing import Any

from csp.decorators import csp_update
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from records import selectors, services
from records.filters import RecordFilter
from records.forms import (
    BulkChangeForm,
    DeskSettingsForm,
    DueDateForm,
    MergeForm,
    NewRecordForm,
    NoteForm,
    RecordDetailsForm,
    ReplyForm,
)
from records.models import Attachment, DeskSettings, Direction, Message, ServiceRecord
from records.originals import original_response
from records.services import DETAIL_LABELS, change_record_details, post_agent_reply

RECORDS_PER_PAGE = 50
# Only raster images are shown in the page; anything else (HTML, SVG, PDF...) is downloaded.
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}


class RecordListView(StaffPermissionRequiredMixin, View):
    """The list: filters, views and sorting from the query string (GET), and the bulk change
    of the selected records (POST, see RecordBulkChangeView)."""

    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest) -> HttpResponse:
        return _render_list(request)


def _render_list(
    request: HttpRequest, *, bulk_form: BulkChangeForm | None = None, status: int = 200
) -> HttpResponse:
    filters = RecordFilter(request.GET, queryset=selectors.records_for_list(), user=request.user)
    # A value that names nothing (a deleted status, say) is left out of the filtering:
    # cleaned_data holds only the valid ones.
    filters.is_valid()
    records = filters.sorted()
    page = Paginator(records, RECORDS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "filter": filters,
        "form": filters.form,
        "page_obj": page,
        "records": page.object_list,
        "sort": filters.sort_key,
        "columns": LIST_COLUMNS,
        "view": request.GET.get("view", ""),
        "can_change": request.user.has_perm("records.change_servicerecord"),
        "can_add": request.user.has_perm("records.add_servicerecord"),
        "bulk_form": bulk_form or BulkChangeForm(),
        "filtered": any(
            request.GET.get(name) for name in filters.form.fields if name not in ("sort", "view")
        ),
    }
    return render(request, "records/list.html", context, status=status)


# The list's columns: (label, the sort key of records.selectors.SORTS).
LIST_COLUMNS = [
    ("Number", "number"),
    ("Title", "title"),
    ("Status", "status"),
    ("Priority", "priority"),
    ("Requester", "requester"),
    ("Assigned admin", "assignee"),
    ("Updated", "updated"),
    ("Due", "due"),
]


class RecordBulkChangeView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest) -> HttpResponse:
        form = BulkChangeForm(request.POST)
        if not form.is_valid():
            return _render_list(request, bulk_form=form, status=400)
        changed = services.change_records_in_bulk(
            records=form.cleaned_data["records"],
            actor=request.user,
            status=form.cleaned_data["bulk_status"],
            assigned_admin=form.assignee(),
        )
        count = len(form.cleaned_data["records"])
        if changed:
            numbers = ", ".join(f"#{number}" for number in sorted(changed))
            messages.success(request, f"Changed {len(changed)} of {count} records: {numbers}.")
        else:
            messages.info(request, f"Nothing changed: the {count} records were already so.")
        # Back to the same view of the list (its query string), never to another site.
        back = QueryDict(request.POST.get("back", "")).urlencode()
        return redirect(f"{reverse('records:list')}?{back}" if back else "records:list")


class RecordCreateView(StaffPermissionRequiredMixin, View):
    """A record opened by hand, e.g. for a phone call."""

    permission_required = "records.add_servicerecord"

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, "records/new.html", {"form": NewRecordForm()})

    def post(self, request: HttpRequest) -> HttpResponse:
        form = NewRecordForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                record = services.open_record_for_requester(
                    actor=request.user,
                    requester_email=data["requester_email"],
                    title=data["title"],
                    description=data["description"],
                    status=data["status"],
                    priority=data["priority"],
                    category=data["category"],
                    group=data["group"],
                    assigned_admin=data["assigned_admin"],
                    due_at=data["due_at"],
                    notify_requester=data["notify_requester"],
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                # The usual acknowledgement: it goes when Notifications send it for new records.
                told = (
                    " The requester's acknowledgement is on its way (when notifications to end "
                    "users about new records are on)."
                    if data["notify_requester"]
                    else ""
                )
                messages.success(request, f"Opened {record.display_number}.{told}")
                return redirect("records:detail", pk=record.pk)
        return render(request, "records/new.html", {"form": form}, status=400)


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
    note_form: NoteForm | None = None,
    due_form: DueDateForm | None = None,
    merge_form: MergeForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context: dict[str, Any] = {
        "record": record,
        "log": selectors.message_log(record=record),
        "suppressed_emails": selectors.suppressed_emails(record=record),
        "can_change": request.user.has_perm("records.change_servicerecord"),
        "reply_form": reply_form or ReplyForm(record=record),
        "details_form": details_form or RecordDetailsForm(record=record),
        "note_form": note_form or NoteForm(),
        "due_form": due_form or DueDateForm(initial={"due_at": record.due_at}),
        "merge_form": merge_form or MergeForm(record=record),
    }
    return render(request, "records/detail.html", context, status=status)


class RecordDetailView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_servicerecord"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _get_record(pk)
        if record.merged_into_id is not None:
            kept = selectors.existing_records(numbers=[record.pk])[record.pk]
            messages.info(
                request,
                f"{record.display_number} was merged into {kept.display_number}: its messages "
                "are here.",
            )
            return redirect("records:detail", pk=kept.pk)
        return _render_record_page(request, record)


def _changeable_record(pk: int) -> ServiceRecord:
    """A record an agent may write to: a merged one is read-only (its log moved away)."""
    record = _get_record(pk)
    if record.merged_into_id is not None:
        raise PermissionDenied(
            f"{record.display_number} was merged into #{record.merged_into_id}: work there."
        )
    return record


class RecordReplyView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _changeable_record(pk)
        form = ReplyForm(request.POST, request.FILES, record=record)
        if form.is_valid():
            try:
                post_agent_reply(
                    record=record,
                    author=request.user,
                    body=form.cleaned_data["body"],
                    integration_id=form.integration_id(),
                    cc=form.cleaned_data["cc"],
                    bcc=form.cleaned_data["bcc"],
                    attachments=form.uploaded_files(),
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
        record = _changeable_record(pk)
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


class RecordNoteView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _changeable_record(pk)
        form = NoteForm(request.POST)
        if form.is_valid():
            try:
                services.add_internal_note(
                    record=record, author=request.user, body=form.cleaned_data["note"]
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, "Internal note added (not emailed to anyone).")
                return redirect("records:detail", pk=record.pk)
        return _render_record_page(request, record, note_form=form, status=400)


class RecordDueDateView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _changeable_record(pk)
        form = DueDateForm(request.POST)
        if not form.is_valid():
            return _render_record_page(request, record, due_form=form, status=400)
        due_at = form.cleaned_data["due_at"]
        if not services.set_due_date(record=record, due_at=due_at):
            messages.info(request, "Nothing changed.")
        elif due_at is None:
            messages.success(request, "Due date removed.")
        else:
            local = timezone.localtime(due_at)
            messages.success(request, f"Due {local:%Y-%m-%d %H:%M}.")
        return redirect("records:detail", pk=record.pk)


class RecordEscalateView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _changeable_record(pk)
        try:
            services.escalate_record(record=record, actor=request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Escalated {record.display_number}: admins were told.")
        return redirect("records:detail", pk=record.pk)


class RecordMergeView(StaffPermissionRequiredMixin, View):
    """Merge this record into another, which is kept."""

    permission_required = "records.change_servicerecord"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = _changeable_record(pk)
        form = MergeForm(request.POST, record=record)
        if form.is_valid():
            kept = form.cleaned_data["into"]
            try:
                services.merge_records(kept=kept, merged=record, actor=request.user)
            except ValidationError as exc:
                form.add_error("into", exc)
            else:
                messages.success(
                    request,
                    f"Merged {record.display_number} into {kept.display_number}: its messages "
                    f"are here, and emails to {record.display_number} arrive here too.",
                )
                return redirect("records:detail", pk=kept.pk)
        return _render_record_page(request, record, merge_form=form, status=400)


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
