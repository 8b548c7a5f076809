"""The Test buttons of Settings > Email: POST only, then the integration's page again with
the outcome next to the field it concerns (errors) or at the top of its section (success).

The mail engine runs them, so they live here, not in `integrations`; the services in
`mailworker.connection_tests` decide, these views only show.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views import View

from integrations.editions import current_limits
from integrations.forms import EmailIntegrationForm
from integrations.models import EmailIntegration
from integrations.views import StaffPermissionRequiredMixin
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
        return self.render(integration, outcome)

    def run(self, integration: EmailIntegration) -> TestOutcome:
        raise NotImplementedError

    def render(self, integration: EmailIntegration, outcome: TestOutcome) -> HttpResponse:
        form = EmailIntegrationForm(instance=integration)
        if outcome.field not in form.fields and outcome.field != TO_FIELD:
            # Not a field on the page: show it at the top of the section instead.
            outcome = TestOutcome(ok=outcome.ok, message=outcome.message)
        context: dict[str, Any] = {
            "form": form,
            "integration": integration,
            "limits": current_limits(),
            "test_outcome": outcome,
            "test_direction": self.direction,
            "test_to": self.request.POST.get(TO_FIELD, ""),
        }
        return render(self.request, "integrations/form.html", context)


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
