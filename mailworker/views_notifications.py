"""Settings > Notifications: which events email whom, and the text of each email."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from mailworker.forms_notifications import EmailTextForm, NotificationSettingsForm
from mailworker.models import NotificationSettings, NotificationTemplate
from mailworker.outbound.compose import record_subject
from mailworker.outbound.email_templates import (
    EMAIL_TEMPLATES,
    TEMPLATES_BY_KEY,
    EmailTemplate,
    sample_values,
)
from mailworker.outbound.texts import (
    current_source,
    default_source,
    one_line,
    render_source,
    reset_email_text,
    save_email_text,
)

# The events of NotificationSettings, each with its end-user and admins switch (None: the
# event emails nobody of that side).
EVENTS: tuple[tuple[str, str | None, str | None], ...] = (
    ("A record is opened", "end_user_on_created", "admins_on_created"),
    ("A record gets a new message", "end_user_on_updated", "admins_on_updated"),
    (
        "Status, assignee or priority change",
        "end_user_on_details_changed",
        "admins_on_details_changed",
    ),
    ("The due date passes (escalation)", None, "admins_on_escalated"),
)


def template_of(key: str) -> EmailTemplate:
    try:
        return TEMPLATES_BY_KEY[key]
    except KeyError:
        raise Http404("No such email") from None


def named(template: EmailTemplate) -> str:
    return f"“{template.label}” (to {template.audience})"


def preview_of(template: EmailTemplate, values: dict[str, str]) -> dict[str, str] | None:
    """The email as it would go out, with made-up values; None if the text does not render
    (a stored text checked with other values once: the form says why when saved again)."""
    sample = sample_values(template.key)
    try:
        subject = one_line(render_source(values["subject"], sample))
        text = render_source(values["body"], sample)
    except Exception:
        return None
    if template.about_record:
        subject = record_subject(subject=subject, number=sample["record"]["number"])
    return {"subject": subject, "text": text}


class NotificationsView(StaffPermissionRequiredMixin, View):
    """The events and their recipients (a form), and the list of email texts."""

    def get_permission_required(self) -> tuple[str, ...]:
        if self.request.method == "POST":
            return ("mailworker.change_notificationsettings",)
        return ("mailworker.view_notificationsettings",)

    def page(self, request: HttpRequest, form: NotificationSettingsForm, status: int = 200):
        edited = set(NotificationTemplate.objects.values_list("key", flat=True))
        context: dict[str, Any] = {
            "form": form,
            "events": [
                (label, form[end_user] if end_user else None, form[admins])
                for label, end_user, admins in EVENTS
            ],
            "templates": [(template, template.key in edited) for template in EMAIL_TEMPLATES],
        }
        return render(request, "mailworker/notifications.html", context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.page(request, NotificationSettingsForm(instance=NotificationSettings.current()))

    def post(self, request: HttpRequest) -> HttpResponse:
        form = NotificationSettingsForm(request.POST, instance=NotificationSettings.current())
        if not form.is_valid():
            return self.page(request, form, status=400)
        form.save()
        messages.success(request, "Notification settings saved.")
        return redirect("notifications:list")


class EmailTextView(StaffPermissionRequiredMixin, View):
    """One email's subject and text: edit, preview (with made-up values), save."""

    def get_permission_required(self) -> tuple[str, ...]:
        if self.request.method == "POST":
            return ("mailworker.change_notificationtemplate",)
        return ("mailworker.view_notificationtemplate",)

    def page(
        self, request: HttpRequest, template: EmailTemplate, form: EmailTextForm, *, edited: bool
    ) -> HttpResponse:
        preview = None
        if not form.is_bound or form.is_valid():
            preview = preview_of(template, form.cleaned_data if form.is_bound else form.initial)
        context = {
            "template": template,
            "form": form,
            "edited": edited,
            "preview": preview,
            "default_subject": default_source(template.key, "subject").strip(),
            "default_body": default_source(template.key, "body"),
        }
        return render(
            request, "mailworker/email_text.html", context, status=400 if form.errors else 200
        )

    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        template = template_of(key)
        subject, body, edited = current_source(key)
        form = EmailTextForm(initial={"subject": subject, "body": body}, key=key)
        return self.page(request, template, form, edited=edited)

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        """ "preview" shows the text as it would go out and saves nothing; "save" keeps it."""
        template = template_of(key)
        form = EmailTextForm(request.POST, key=key)
        edited = NotificationTemplate.objects.filter(key=key).exists()
        if request.POST.get("action") == "preview" or not form.is_valid():
            return self.page(request, template, form, edited=edited)
        save_email_text(
            key=key,
            subject=form.cleaned_data["subject"],
            body=form.cleaned_data["body"],
            user=request.user,
        )
        messages.success(request, f"{named(template)} saved: it is sent from now on.")
        return redirect("notifications:edit", key=key)


class ResetEmailTextView(StaffPermissionRequiredMixin, View):
    permission_required = "mailworker.change_notificationtemplate"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        template = template_of(key)
        if reset_email_text(key=key):
            messages.success(request, f"{named(template)} has the default text again.")
        else:
            messages.info(request, f"“{template.label}” already had the default text.")
        return redirect("notifications:edit", key=key)
