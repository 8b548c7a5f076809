"""The Test buttons of Settings > Email: POST only, then back to the integration's page
(POST/redirect/GET, so a reload never sends another test email), which shows the outcome in
the Test panel next to the button, and an error also next to the field it concerns.

The mail engine runs them, so they live here, not in `integrations`; the services in
`mailworker.connection_tests` decide, these views only show.
"""

from __future__ import annotations

from dataclasses import asdict

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views import View

from integrations.forms import EmailIntegrationForm
from integrations.models import EmailIntegration
from integrations.views import TEST_OUTCOME_SESSION_PREFIX, StaffPermissionRequiredMixin
from mailworker.connection_tests import (
    TO_FIELD,
    TestOutcome,
    send_test_email,
    test_incoming_connection,
)


class _IntegrationTestView(StaffPermissionRequiredMixin, View):
    permission_required = "integrations.change_emailintegration"
    http_method_names = ["post"]
    direction = ""

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        integration = get_object_or_404(EmailIntegration, pk=pk)
        outcome = self.run(integration)
        if outcome.field not in EmailIntegrationForm.base_fields and outcome.field != TO_FIELD:
            # Not a field on the page: the panel alone shows it.
            outcome = TestOutcome(ok=outcome.ok, message=outcome.message)
        # Kept for the next page only (the integration's page pops it), like a message.
        request.session[f"{TEST_OUTCOME_SESSION_PREFIX}{integration.pk}"] = {
            "direction": self.direction,
            "to": request.POST.get(TO_FIELD, ""),
            "outcome": asdict(outcome),
        }
        page = reverse("integrations:edit", args=[integration.pk])
        return HttpResponseRedirect(f"{page}#{self.direction}-test")

    def run(self, integration: EmailIntegration) -> TestOutcome:
        raise NotImplementedError


class OutgoingTestView(_IntegrationTestView):
    """Test: send a test email to the address the admin typed."""

    direction = "outgoing"

    def run(self, integration: EmailIntegration) -> TestOutcome:
        return send_test_email(integration=integration, to=self.request.POST.get(TO_FIELD, ""))


class IncomingTestView(_IntegrationTestView):
    """Test connection: log in, open the folder, count the emails waiting."""

    direction = "incoming"

    def run(self, integration: EmailIntegration) -> TestOutcome:
        return test_incoming_connection(integration=integration)
