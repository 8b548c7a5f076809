"""Forms of the agent's record screens. They shape input; `records.services` decides."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.template.defaultfilters import filesizeformat

from integrations.models import EmailIntegration
from records import selectors
from records.models import AdminGroup, Category, DeskSettings, Priority, ServiceRecord, Status, User
from records.services import UploadedFile

UNASSIGNED = "none"


def agent_name(user: User) -> str:
    return user.get_full_name() or user.get_username()


class AgentChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: User) -> str:
        return agent_name(obj)


ADDRESS_SEPARATORS = re.compile(r"[,;\s]+")
MAX_EXTRA_RECIPIENTS = 20


class AddressListField(forms.CharField):
    """Email addresses separated by commas (or semicolons, or spaces), as a mail program
    takes them; each one checked, the first wrong one named."""

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value) or ""
        return [address for address in ADDRESS_SEPARATORS.split(text) if address]

    def validate(self, value: list[str]) -> None:
        if self.required and not value:
            raise ValidationError(self.error_messages["required"], code="required")
        for address in value:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(
                    f"“{address}” is not an email address. Separate addresses with commas, "
                    "e.g. ann@example.com, bob@example.com.",
                    code="invalid",
                ) from None
        if len(value) > MAX_EXTRA_RECIPIENTS:
            raise ValidationError(
                f"At most {MAX_EXTRA_RECIPIENTS} addresses here; this has {len(value)}."
            )

    def run_validators(self, value: list[str]) -> None:
        return None  # max_length and the like apply to the text, checked in validate()


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one input (Django's documented recipe)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data if item]
        return [single(data, initial)] if data else []


class ReplyForm(forms.Form):
    """An agent's reply by email; the sending integration is a choice only when there is one
    to make (more than one integration sends)."""

    body = forms.CharField(label="Reply", widget=forms.Textarea(attrs={"rows": 6}), strip=False)
    cc = AddressListField(
        label="Cc", required=False, help_text="Addresses separated by commas; they see each other."
    )
    bcc = AddressListField(
        label="Bcc",
        required=False,
        help_text="Hidden recipients: no one sees them; the message log shows them to staff.",
    )
    attachments = MultipleFileField(
        label="Attachments",
        required=False,
        help_text=(
            f"Up to {filesizeformat(settings.REPLY_ATTACHMENTS_MAX_BYTES)} for all files together."
        ),
    )
    integration = forms.ModelChoiceField(
        queryset=EmailIntegration.objects.none(),
        required=False,
        empty_label=None,
        label="Send through",
    )

    def __init__(self, *args: Any, record: ServiceRecord, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = selectors.sending_integrations()
        if len(choices) > 1:
            field = self.fields["integration"]
            field.queryset = EmailIntegration.objects.filter(outgoing_enabled=True).order_by(
                "name", "pk"
            )
            field.required = True
            default = selectors.default_reply_integration(record=record, choices=choices)
            field.initial = default.pk if default else None
            field.label_from_instance = lambda i: f"{i.name} <{i.email_address}>"
        else:
            # None: the mail engine sends through the usual integration.
            del self.fields["integration"]

    def integration_id(self) -> int | None:
        integration = self.cleaned_data.get("integration")
        return integration.pk if integration else None

    def clean_attachments(self) -> list[Any]:
        files = self.cleaned_data["attachments"]
        limit = settings.REPLY_ATTACHMENTS_MAX_BYTES
        total = sum(file.size for file in files)
        if total > limit:
            raise ValidationError(
                f"The attachments come to {filesizeformat(total)}; a reply takes at most "
                f"{filesizeformat(limit)}. Leave some out, or share large files by a link."
            )
        return files

    def uploaded_files(self) -> list[UploadedFile]:
        return [
            UploadedFile(
                filename=file.name,
                content_type=file.content_type or "application/octet-stream",
                content=file.read(),
            )
            for file in self.cleaned_data["attachments"]
        ]


class NoteForm(forms.Form):
    note = forms.CharField(
        label="Internal note",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Seen by staff only: never emailed to anyone.",
    )


class DueDateForm(forms.Form):
    due_at = forms.DateTimeField(
        label="Due",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: no due date. Admins are told when it passes.",
    )


class NewRecordForm(forms.Form):
    """A record an agent opens by hand: the requester is a user picked by address, or a new
    address (then an end user is created)."""

    requester_email = forms.EmailField(
        label="Requester's email",
        help_text="An existing user's address, or a new one: an end user is created for it.",
    )
    title = forms.CharField(max_length=500)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False)
    status = forms.ModelChoiceField(queryset=Status.objects.all(), empty_label=None)
    priority = forms.TypedChoiceField(choices=Priority.choices, coerce=int, initial=Priority.NORMAL)
    category = forms.ModelChoiceField(
        queryset=Category.objects.all(), required=False, empty_label="—"
    )
    group = forms.ModelChoiceField(
        queryset=AdminGroup.objects.all(), required=False, empty_label="—"
    )
    assigned_admin = AgentChoiceField(
        queryset=User.objects.none(), required=False, empty_label="(unassigned)"
    )
    due_at = DueDateForm.base_fields["due_at"]
    notify_requester = forms.BooleanField(
        label="Email the requester that the record was opened",
        required=False,
        help_text="The usual acknowledgement, with the record number to reply to.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assigned_admin"].queryset = selectors.agents()
        self.fields["status"].queryset = Status.objects.filter(is_closed=False)
        new = Status.objects.filter(name="New").first()
        if new is not None:
            self.fields["status"].initial = new.pk


class BulkChangeForm(forms.Form):
    """The list's bulk change: the selected records get the status and/or assignee chosen."""

    records = forms.ModelMultipleChoiceField(
        queryset=ServiceRecord.objects.filter(merged_into__isnull=True).select_related(
            "status", "assigned_admin"
        ),
        error_messages={"required": "Select the records to change (tick their boxes)."},
    )
    bulk_status = forms.ModelChoiceField(
        queryset=Status.objects.all(), required=False, empty_label="(keep)", label="Set status"
    )
    bulk_assignee = forms.ChoiceField(required=False, label="Set assigned admin")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["bulk_assignee"].choices = [
            ("", "(keep)"),
            (UNASSIGNED, "(unassigned)"),
            *((str(agent.pk), agent_name(agent)) for agent in selectors.agents()),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("bulk_status") and not data.get("bulk_assignee"):
            raise ValidationError("Choose a status or an assigned admin to set.")
        return data

    def assignee(self) -> User | None | object:
        """The assignee to set: a user, None (unassign), or UNSET (keep each one's)."""
        from records.services import UNSET

        value = self.cleaned_data.get("bulk_assignee") or ""
        if value == UNASSIGNED:
            return None
        if value.isdigit():
            return selectors.agents().get(pk=int(value))
        return UNSET


class MergeForm(forms.Form):
    into = forms.IntegerField(
        label="Merge this record into #",
        min_value=1,
        help_text="The other record is kept; this one is closed and its message log moves there.",
    )

    def __init__(self, *args: Any, record: ServiceRecord, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def clean_into(self) -> ServiceRecord:
        number = self.cleaned_data["into"]
        try:
            return ServiceRecord.objects.select_related("requester").get(pk=number)
        except ServiceRecord.DoesNotExist:
            raise ValidationError(f"There is no record #{number}.") from None


class RecordDetailsForm(forms.Form):
    status = forms.ModelChoiceField(queryset=Status.objects.all(), empty_label=None)
    assigned_admin = AgentChoiceField(
        queryset=User.objects.none(), required=False, empty_label="(unassigned)"
    )
    priority = forms.TypedChoiceField(choices=Priority.choices, coerce=int)

    def __init__(self, *args: Any, record: ServiceRecord, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "status": record.status_id,
                "assigned_admin": record.assigned_admin_id,
                "priority": record.priority,
            },
        )
        super().__init__(*args, **kwargs)
        # The current assignee stays a choice even if no longer staff, so saving other
        # details does not silently unassign them.
        agents = selectors.agents()
        if record.assigned_admin_id:
            agents = agents | User.objects.filter(pk=record.assigned_admin_id)
        self.fields["assigned_admin"].queryset = agents


class DeskSettingsForm(forms.ModelForm):
    originals_retention_days = forms.IntegerField(
        label="Keep originals and the incoming email log for (days)",
        min_value=1,
        max_value=3650,
        help_text="1 to 3650 days. A daily task deletes older originals and incoming log rows.",
    )

    class Meta:
        model = DeskSettings
        fields = ["originals_retention_days"]
