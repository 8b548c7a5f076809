"""Settings > Email: list, create, edit and delete email integrations. Views stay thin: the
form shapes input, `integrations.services` decides."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views import View
from django.views.generic import ListView

from integrations.editions import current_limits
from integrations.forms import EmailIntegrationForm
from integrations.models import EmailIntegration
from integrations.oauth.errors import OAuthError
from integrations.oauth.services import (
    begin_connect,
    connect_app_only,
    finish_connect,
    provider_name,
)
from integrations.selectors import sending_integration
from integrations.services import delete_integration, save_integration
from integrations.validation import sender_list_overlaps

# Where a Test button's outcome waits for the page it redirects to (POST/redirect/GET: a
# reload shows the page again without sending another test email). mailworker's Test views
# write it; the integration's page reads it once.
TEST_OUTCOME_SESSION_PREFIX = "integration-test-outcome:"


def pop_test_outcome(request: HttpRequest, integration: EmailIntegration) -> dict[str, Any]:
    """The last Test outcome of this integration in this session, shown once."""
    if integration.pk is None:
        return {}
    return request.session.pop(f"{TEST_OUTCOME_SESSION_PREFIX}{integration.pk}", None) or {}


class StaffPermissionRequiredMixin(PermissionRequiredMixin):
    """Staff with the given permissions only. Anonymous users go to login; others get 403."""

    def has_permission(self) -> bool:
        user = self.request.user
        return user.is_active and user.is_staff and super().has_permission()


class IntegrationListView(StaffPermissionRequiredMixin, ListView):
    permission_required = "integrations.view_emailintegration"
    # Each row says whether its grant needs a reconnect; the mail engine's state comes from
    # its template tags (templates/integrations/list.html).
    queryset = EmailIntegration.objects.select_related("oauth_grant")
    template_name = "integrations/list.html"
    context_object_name = "integrations"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["limits"] = current_limits()
        context["has_default"] = any(i.is_default for i in context["integrations"])
        # Which integration system emails really go out through: the default when it sends.
        context["system_sender"] = sending_integration()
        return context


class IntegrationFormView(StaffPermissionRequiredMixin, View):
    """Create (no pk) or edit (pk) an integration; Apply saves."""

    template_name = "integrations/form.html"

    def get_permission_required(self) -> tuple[str, ...]:
        if "pk" in self.kwargs:
            return ("integrations.change_emailintegration",)
        return ("integrations.add_emailintegration",)

    def get_integration(self) -> EmailIntegration:
        if "pk" in self.kwargs:
            return get_object_or_404(
                EmailIntegration.objects.select_related("oauth_grant"), pk=self.kwargs["pk"]
            )
        return EmailIntegration()

    def get(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        integration = self.get_integration()
        form = EmailIntegrationForm(instance=integration)
        return self.render(form, test=pop_test_outcome(request, integration))

    def post(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        integration = self.get_integration()
        is_new = integration.pk is None
        was_default = integration.is_default
        form = EmailIntegrationForm(request.POST, instance=integration)
        if form.is_valid():
            try:
                saved = save_integration(
                    integration=form.instance,
                    secrets=form.secrets(),
                    unless_status_in=form.cleaned_data["unless_status_in"],
                    forward_ignored_to=form.cleaned_data["forward_ignored_to"],
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                verb = "created" if is_new else "saved"
                saved_text = f"Integration “{saved.name}” {verb}."
                note = default_note(
                    saved, asked=form.cleaned_data["is_default"], was_default=was_default
                )
                if note is None:
                    messages.success(request, saved_text)
                else:
                    level, text = note
                    messages.add_message(request, level, f"{saved_text} {text}")
                for overlap in sender_list_overlaps(
                    accepted=saved.whitelist_senders, ignored=saved.ignore_senders
                ):
                    messages.warning(request, f"The sender lists overlap: {overlap}")
                return HttpResponseRedirect(reverse("integrations:edit", args=[saved.pk]))
        return self.render(form, status=400)

    def render(
        self, form: EmailIntegrationForm, status: int = 200, test: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            "form": form,
            "integration": form.instance,
            "limits": current_limits(),
            "error_summary": form.error_summary() if form.is_bound else [],
            # A Test button's outcome, shown in its panel (and next to the field it concerns).
            "test_outcome": (test or {}).get("outcome"),
            "test_direction": (test or {}).get("direction", ""),
            "test_to": (test or {}).get("to", ""),
        }
        failed_field = (context["test_outcome"] or {}).get("field", "")
        if failed_field in form.fields:
            context["test_field_label"] = form[failed_field].label
        return render(
            request=self.request, template_name=self.template_name, context=context, status=status
        )


def default_note(
    saved: EmailIntegration, *, asked: bool, was_default: bool
) -> tuple[int, str] | None:
    """What to tell the admin when the default mark is not where the checkbox asked for it
    (integrations.services decides where it goes): a message level and the words."""
    if saved.is_default and not asked and was_default:
        return (
            messages.WARNING,
            "It stays the default integration: the desk needs one to send its system emails. "
            "Choose another integration as default first: open it and tick “Use as default "
            "email integration” there.",
        )
    if saved.is_default and not asked:
        return (
            messages.SUCCESS,
            "It is the default integration: no other integration that sends was, so it "
            "sends the desk's system emails.",
        )
    if was_default and not saved.is_default:
        successor = EmailIntegration.objects.filter(is_default=True).first()
        if successor is None:
            return (
                messages.WARNING,
                "It is no longer the default integration, and no integration that sends is: "
                "the desk cannot send its system emails.",
            )
        return (
            messages.SUCCESS,
            f"It is no longer the default integration; “{successor.name}” sends the desk's "
            "system emails now.",
        )
    return None


class IntegrationDeleteView(StaffPermissionRequiredMixin, View):
    permission_required = "integrations.delete_emailintegration"
    template_name = "integrations/confirm_delete.html"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        integration = get_object_or_404(EmailIntegration, pk=pk)
        return render(request, self.template_name, {"integration": integration})

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        integration = get_object_or_404(EmailIntegration, pk=pk)
        name = integration.name
        delete_integration(integration=integration)
        messages.success(request, f"Integration “{name}” deleted.")
        return redirect("integrations:list")


# OAuth 2.0: Connect with Microsoft / Google ---------------------------------------------

PENDING_CONNECT_PREFIX = "oauth-connect:"


def oauth_redirect_uri(request: HttpRequest) -> str:
    """The one redirect URI for every integration and provider: the state says which
    integration a callback is for."""
    return settings.OAUTH_REDIRECT_URI or request.build_absolute_uri(
        reverse("integrations:oauth_callback")
    )


class OAuthConnectView(StaffPermissionRequiredMixin, View):
    """Connect pressed: send the browser to the provider's sign-in (delegated), or get an
    app-only token at once. Uses the settings as last applied."""

    permission_required = "integrations.change_emailintegration"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        integration = get_object_or_404(EmailIntegration, pk=pk)
        edit_page = reverse("integrations:edit", args=[integration.pk])
        provider = provider_name(integration)
        try:
            if integration.uses_app_only_oauth:
                grant = connect_app_only(integration=integration)
                messages.success(
                    request,
                    f"Connected to {provider} with app-only access for {grant.account}.",
                )
                return HttpResponseRedirect(edit_page)
            pending = begin_connect(
                integration=integration, redirect_uri=oauth_redirect_uri(request)
            )
        except OAuthError as exc:
            messages.error(request, f"Could not connect to {provider}: {exc}")
            return HttpResponseRedirect(edit_page)
        # The state ties the callback to this browser session, this user and this
        # integration: a callback with any other state is refused (CSRF of the flow).
        pending["user_id"] = request.user.pk
        request.session[PENDING_CONNECT_PREFIX + pending["flow"]["state"]] = pending
        return HttpResponseRedirect(pending["flow"]["auth_uri"])


class OAuthCallbackView(StaffPermissionRequiredMixin, View):
    """Where the provider sends the browser back with a code (or an error)."""

    permission_required = "integrations.change_emailintegration"
    template_name = "integrations/oauth_refused.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        state = request.GET.get("state", "")
        # Popped: a state is good for one callback only.
        pending = request.session.pop(PENDING_CONNECT_PREFIX + state, None) if state else None
        if pending is None or pending.get("user_id") != request.user.pk:
            return render(
                request,
                self.template_name,
                {
                    "reason": "This sign-in was not started from this browser session, or its "
                    "answer was already used. Open the integration and press Connect again."
                },
                status=400,
            )
        integration = get_object_or_404(EmailIntegration, pk=pending["integration_id"])
        provider = provider_name(integration)
        try:
            grant = finish_connect(
                integration=integration, pending=pending, response=request.GET.dict()
            )
        except OAuthError as exc:
            messages.error(request, f"Not connected to {provider}: {exc}")
        else:
            messages.success(request, f"Connected to {provider} as {grant.account}.")
        return HttpResponseRedirect(reverse("integrations:edit", args=[integration.pk]))
