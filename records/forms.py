"""Forms of the agent's record screens. They shape input; `records.services` decides."""

from __future__ import annotations

from typing import Any

from django import forms

from integrations.models import EmailIntegration
from records import selectors
from records.models import DeskSettings, Priority, ServiceRecord, Status, User

UNASSIGNED = "none"


def agent_name(user: User) -> str:
    return user.get_full_name() or user.get_username()


class AgentChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: User) -> str:
        return agent_name(obj)


class RecordSearchForm(forms.Form):
    """The list's search box and filters, read from the query string."""

    q = forms.CharField(required=False, label="Search", max_length=200)
    status = forms.ModelChoiceField(
        queryset=Status.objects.all(), required=False, empty_label="Any status"
    )
    assignee = forms.ChoiceField(required=False, label="Assigned admin")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["q"].widget.attrs.update(
            {"placeholder": "#123, title, requester", "type": "search"}
        )
        self.fields["assignee"].choices = [
            ("", "Anyone"),
            (UNASSIGNED, "Unassigned"),
            *((str(agent.pk), agent_name(agent)) for agent in selectors.agents()),
        ]

    def search_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `selectors.search_records`; invalid filters are ignored."""
        data = self.cleaned_data if self.is_valid() else {}
        assignee = data.get("assignee") or ""
        status = data.get("status")
        return {
            "query": data.get("q") or "",
            "status_id": status.pk if status else None,
            "assignee_id": int(assignee) if assignee.isdigit() else None,
            "unassigned": assignee == UNASSIGNED,
        }


class ReplyForm(forms.Form):
    """An agent's reply by email; the sending integration is a choice only when there is one
    to make (more than one integration sends)."""

    body = forms.CharField(label="Reply", widget=forms.Textarea(attrs={"rows": 6}), strip=False)
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
