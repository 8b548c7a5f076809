"""Settings > Email: list, create, edit and delete email integrations. Views stay thin: the
form shapes input, `integrations.services` decides."""

from __future__ import annotations

from typing import Any

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
from integrations.services import delete_integration, save_integration


class StaffPermissionRequiredMixin(PermissionRequiredMixin):
    """Staff with the given permissions only. Anonymous users go to login; others get 403."""

    def has_permission(self) -> bool:
        user = self.request.user
        return user.is_active and user.is_staff and super().has_permission()


class IntegrationListView(StaffPermissionRequiredMixin, ListView):
    permission_required = "integrations.view_emailintegration"
    model = EmailIntegration
    template_name = "integrations/list.html"
    context_object_name = "integrations"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["limits"] = current_limits()
        context["has_default"] = any(i.is_default for i in context["integrations"])
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
            return get_object_or_404(EmailIntegration, pk=self.kwargs["pk"])
        return EmailIntegration()

    def get(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        form = EmailIntegrationForm(instance=self.get_integration())
        return self.render(form)

    def post(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        integration = self.get_integration()
        is_new = integration.pk is None
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
                messages.success(request, f"Integration “{saved.name}” {verb}.")
                return HttpResponseRedirect(reverse("integrations:edit", args=[saved.pk]))
        return self.render(form, status=400)

    def render(self, form: EmailIntegrationForm, status: int = 200) -> HttpResponse:
        context = {"form": form, "integration": form.instance, "limits": current_limits()}
        return render(
            request=self.request, template_name=self.template_name, context=context, status=status
        )


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
