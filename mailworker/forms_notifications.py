"""The forms of Settings > Notifications."""

from __future__ import annotations

from typing import Any

from django import forms

from mailworker.models import NotificationSettings
from mailworker.outbound.email_templates import sample_values
from mailworker.outbound.texts import template_problem

# Django's hint for an unknown tag speaks of registering and loading tag libraries, which
# an email text cannot do.
DJANGO_TAG_HINT = " Did you forget to register or load this tag?"


class NotificationSettingsForm(forms.ModelForm):
    class Meta:
        model = NotificationSettings
        fields = [
            "end_user_on_created",
            "end_user_on_updated",
            "end_user_on_details_changed",
            "admins_on_created",
            "admins_on_updated",
            "admins_on_details_changed",
            "admins_on_escalated",
            "admin_recipients",
        ]
        widgets = {"admin_recipients": forms.RadioSelect}
        labels = {"admin_recipients": "Which admins"}


class EmailTextForm(forms.Form):
    """An email's subject and text; each must render with the sample values."""

    subject = forms.CharField(max_length=998, widget=forms.TextInput(attrs={"size": 80}))
    body = forms.CharField(
        label="Text", strip=False, widget=forms.Textarea(attrs={"rows": 14, "cols": 80})
    )

    def __init__(self, *args: Any, key: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = key

    def _checked(self, field: str) -> str:
        source = self.cleaned_data[field]
        problem = template_problem(source, sample_values(self.key))
        if problem is not None:
            raise forms.ValidationError(
                f"{problem.__str__().replace(DJANGO_TAG_HINT, '')} — correct it, or press "
                "“Reset to the default”."
            )
        return source

    def clean_subject(self) -> str:
        return self._checked("subject")

    def clean_body(self) -> str:
        # Browsers send a textarea's lines with CRLF; the shipped texts (and emails being
        # composed) use LF.
        self.cleaned_data["body"] = self.cleaned_data["body"].replace("\r\n", "\n")
        return self._checked("body")
