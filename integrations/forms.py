"""The Settings > Email integration form. It only shapes input: the rules are in the model's
`clean()` and in `integrations.services`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from integrations.models import (
    BulkMailPolicy,
    DmarcFailurePolicy,
    EmailIntegration,
    OAuthAccess,
    StrangerPolicy,
)
from integrations.services import SECRET_FIELDS, Secrets
from records.models import Status

# The page's sections, so that an error summary says which "Password" or "Protocol" it means.
SECTION_OF_FIELD = {
    **dict.fromkeys(("name", "description", "is_default"), ""),
    **dict.fromkeys(
        (
            "oauth_access",
            "oauth_tenant",
            "oauth_client_id",
            "oauth_client_secret",
            "oauth_client_certificate",
            "oauth_service_account_key",
        ),
        "OAuth 2.0 app",
    ),
    **dict.fromkeys(
        (
            "outgoing_enabled",
            "outgoing_protocol",
            "email_address",
            "smtp_host",
            "smtp_port",
            "smtp_encryption",
            "smtp_username",
            "smtp_password",
            "outgoing_encoding",
            "outgoing_content_type",
            "outgoing_charset",
        ),
        "Outgoing Emails",
    ),
    **dict.fromkeys(("verify_certificates", "ca_certificate"), "Security"),
}
# Fields shown in a section's heading rather than in a `#field-<name>` block of their own.
ANCHOR_OF_FIELD = {"incoming_enabled": "incoming-section", "outgoing_enabled": "outgoing-section"}


@dataclass(frozen=True)
class FieldError:
    """One line of the error summary at the top of the page: what is wrong, and where."""

    anchor: str  # the element's id; "" for an error about the integration as a whole
    label: str
    message: str


class SenderListField(forms.CharField):
    """A list of addresses or domains, typed one per line (commas and semicolons work too)."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        text = super().to_python(value) or ""
        return [entry for entry in re.split(r"[\s,;]+", text) if entry]


class SecretField(forms.CharField):
    """A password or token: never rendered back; left empty it keeps what is stored."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        kwargs.setdefault(
            "widget",
            forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        )
        super().__init__(**kwargs)


class SecretTextarea(forms.Textarea):
    """A textarea for a pasted key or certificate that, like a password input, never
    renders a value back to the browser."""

    def format_value(self, value: Any) -> None:
        return None


class EmailIntegrationForm(forms.ModelForm):
    # Errors come from the server, next to each field; browser "required" popups would hide
    # fields of a collapsed section.
    use_required_attribute = False

    ignore_senders = SenderListField(
        required=False, label="Ignore emails from", help_text="Addresses and domains, at most 20."
    )
    whitelist_senders = SenderListField(
        required=False,
        label="Accept only emails from",
        help_text="Addresses and domains. Empty: accept every sender.",
    )
    trusted_authserv_ids = SenderListField(
        required=False,
        label="Trust Authentication-Results from",
        help_text="The authserv-id your receiving mail server writes in its "
        "Authentication-Results header, one per line (e.g. mx.example.com). Any other such "
        "header is the sender's own words and is ignored. Empty: senders are not verified "
        "(Microsoft 365 and Google: their servers, mx.microsoft.com and mx.google.com, are "
        "filled in when you save).",
    )
    duplicate_exempt_senders = SenderListField(
        required=False,
        label="Never treat as duplicates emails from",
        help_text="Addresses, or usernames of users.",
    )
    incoming_password = SecretField(label="Password")
    smtp_password = SecretField(label="Password")
    oauth_client_secret = SecretField(label="Client secret")
    oauth_client_certificate = SecretField(
        label="Client certificate (PEM)",
        help_text="Microsoft, instead of a client secret: the certificate uploaded to the app "
        "registration and its private key, both PEM, pasted together.",
        widget=SecretTextarea(attrs={"rows": 3, "spellcheck": "false", "autocomplete": "off"}),
    )
    oauth_service_account_key = SecretField(
        label="Service account key (JSON)",
        help_text="Google app-only: the JSON key of a service account allowed domain-wide "
        "delegation for https://mail.google.com/.",
        widget=SecretTextarea(attrs={"rows": 3, "spellcheck": "false", "autocomplete": "off"}),
    )
    unless_status_in = forms.ModelMultipleChoiceField(
        queryset=Status.objects.all(),
        required=False,
        label="Unless the record's status is",
        widget=forms.CheckboxSelectMultiple,
    )
    forward_ignored_to = forms.ModelMultipleChoiceField(
        queryset=get_user_model()
        .objects.filter(is_active=True, is_staff=True)
        .order_by("username"),
        required=False,
        label="Forward ignored emails to",
        widget=forms.SelectMultiple(attrs={"size": 4}),
    )

    class Meta:
        model = EmailIntegration
        fields = [
            "name",
            "description",
            "is_default",
            "incoming_enabled",
            "incoming_protocol",
            "oauth_mailbox_access",
            "oauth_access",
            "oauth_tenant",
            "oauth_client_id",
            "incoming_server",
            "incoming_port",
            "incoming_encryption",
            "incoming_username",
            "incoming_folder",
            "graph_processed_folder",
            "poll_interval_seconds",
            "use_idle",
            "use_last_record_number",
            "search_body_for_record_number",
            "change_status_to",
            "ignore_senders",
            "ignore_subject_regex",
            "whitelist_senders",
            "duplicate_exempt_senders",
            "copy_incoming_to",
            "remove_emojis",
            "bulk_mail_policy",
            "stranger_policy",
            "trusted_authserv_ids",
            "dmarc_failure_policy",
            "outgoing_enabled",
            "outgoing_protocol",
            "email_address",
            "smtp_host",
            "smtp_port",
            "smtp_encryption",
            "smtp_username",
            "outgoing_encoding",
            "outgoing_content_type",
            "outgoing_charset",
            "verify_certificates",
            "ca_certificate",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "ca_certificate": forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        }

    # The order of the page (templates/integrations/form.html), for the error summary.
    field_order = [
        *("name", "description", "is_default", "incoming_enabled", "incoming_protocol"),
        *("oauth_mailbox_access", "incoming_server", "incoming_port", "incoming_encryption"),
        *("incoming_username", "incoming_password", "incoming_folder", "graph_processed_folder"),
        *("poll_interval_seconds", "use_idle", "use_last_record_number"),
        *("search_body_for_record_number", "change_status_to", "unless_status_in"),
        *("ignore_senders", "ignore_subject_regex", "whitelist_senders"),
        *("duplicate_exempt_senders", "forward_ignored_to", "copy_incoming_to", "remove_emojis"),
        *("bulk_mail_policy", "stranger_policy", "trusted_authserv_ids", "dmarc_failure_policy"),
        *("oauth_access", "oauth_tenant", "oauth_client_id", "oauth_client_secret"),
        *("oauth_client_certificate", "oauth_service_account_key", "outgoing_enabled"),
        *("outgoing_protocol", "email_address", "smtp_host", "smtp_port", "smtp_encryption"),
        *("smtp_username", "smtp_password", "outgoing_encoding", "outgoing_content_type"),
        *("outgoing_charset", "verify_certificates", "ca_certificate"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["change_status_to"].empty_label = "Do not change"
        self.fields["is_default"].help_text = (
            "The default sends the desk's system emails (alerts, invitations, notifications), "
            "so it must have Outgoing Emails on. To move the mark, tick this on the "
            "integration that should have it."
        )
        # Only OAuth 2.0 integrations show it; others (and older clients) may leave it out.
        self.fields["oauth_access"].required = False
        # Policies with a safe default: a client that leaves them out gets the default.
        for name in ("stranger_policy", "dmarc_failure_policy", "bulk_mail_policy"):
            self.fields[name].required = False
        if self.instance.pk:
            self.initial["unless_status_in"] = list(self.instance.unless_status_in.all())
            self.initial["forward_ignored_to"] = list(self.instance.forward_ignored_to.all())
            for name in SECRET_FIELDS:
                if getattr(self.instance, name):
                    field = self.fields[name]
                    field.widget.attrs["placeholder"] = "•••••••• (stored; leave empty to keep)"
                    field.help_text = "Stored. Type a new one to replace it."

    def clean_oauth_access(self) -> str:
        return self.cleaned_data.get("oauth_access") or OAuthAccess.DELEGATED

    def clean_stranger_policy(self) -> str:
        return self.cleaned_data.get("stranger_policy") or StrangerPolicy.NEW_RECORD

    def clean_bulk_mail_policy(self) -> str:
        return self.cleaned_data.get("bulk_mail_policy") or BulkMailPolicy.RECORD

    def clean_dmarc_failure_policy(self) -> str:
        return self.cleaned_data.get("dmarc_failure_policy") or DmarcFailurePolicy.MARK

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # Put the new secrets on the instance before the model's clean() runs, so "password
        # required" sees them; an empty field keeps the stored secret.
        for name, value in self.secrets().__dict__.items():
            if value is not None:
                setattr(self.instance, name, value)
        return cleaned

    def _get_validation_exclusions(self) -> set[str]:
        # Taking the default mark from another integration is the service's job, so the
        # one-default constraint must not stop the form first.
        exclusions = super()._get_validation_exclusions()
        exclusions.add("is_default")
        return exclusions

    def error_summary(self) -> list[FieldError]:
        """Every error of a failed Apply, each with the anchor of its field: the summary at
        the top of the page links to them, since most sit far below."""
        lines = [FieldError("", "", str(message)) for message in self.non_field_errors()]
        for name, field in self.fields.items():
            label = str(field.label or name).rstrip(":")
            label = label[:1].upper() + label[1:]
            section = SECTION_OF_FIELD.get(name, "Incoming Emails")
            if section and name not in ANCHOR_OF_FIELD:
                label = f"{section} › {label}"
            anchor = ANCHOR_OF_FIELD.get(name, f"field-{name}")
            lines.extend(
                FieldError(anchor, label, str(message)) for message in self.errors.get(name, ())
            )
        return lines

    def secrets(self) -> Secrets:
        values = {name: (self.cleaned_data.get(name) or None) for name in SECRET_FIELDS}
        return Secrets(**values)
