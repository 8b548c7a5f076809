"""Settings > Email Rules: the rules in evaluation order, a rule's form, and "Try it".

Every change is a POST that redirects back to the list (POST/redirect/GET), so the screen
works without JavaScript and a reload repeats nothing. "Try it" changes nothing, so its POST
answers with the list and the result in place."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from records.email_rule_forms import (
    BaseConditionFormSet,
    EmailRuleForm,
    TryRulesForm,
    condition_formset,
)
from records.email_rule_services import (
    delete_email_rule,
    describe_changes,
    email_rules_in_order,
    move_email_rule,
    reorder_email_rules,
    save_email_rule,
    set_email_rule_active,
    try_email_rules,
)
from records.email_rules import RULES_BUDGET_SECONDS, RuleVerdict
from records.models import EmailRule


def _render_list(
    request: HttpRequest, *, try_form: TryRulesForm | None = None, status: int = 200
) -> HttpResponse:
    context: dict[str, Any] = {
        "rules": email_rules_in_order(),
        "try_form": try_form or TryRulesForm(),
        "budget_seconds": RULES_BUDGET_SECONDS,
    }
    if try_form is not None and try_form.is_valid():
        outcome = try_email_rules(facts=try_form.facts())
        context["tried"] = {
            "trace": outcome.trace,
            "fired": outcome.applied,
            "changes": describe_changes(outcome.changes),
            "fired_verdict": RuleVerdict.FIRED,
        }
    return render(request, "records/rules/list.html", context, status=status)


class EmailRuleListView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_emailrule"

    def get(self, request: HttpRequest) -> HttpResponse:
        return _render_list(request)


class EmailRuleTryView(StaffPermissionRequiredMixin, View):
    """Which rules an example email would fire and what they would set; saves nothing."""

    permission_required = "records.view_emailrule"

    def get(self, request: HttpRequest) -> HttpResponse:
        return redirect("rules:list")

    def post(self, request: HttpRequest) -> HttpResponse:
        form = TryRulesForm(request.POST)
        return _render_list(request, try_form=form, status=200 if form.is_valid() else 400)


class EmailRuleFormView(StaffPermissionRequiredMixin, View):
    """Create (no pk) or change (pk) a rule with its conditions."""

    def get_permission_required(self) -> tuple[str, ...]:
        if self.kwargs.get("pk") is None:
            return ("records.view_emailrule", "records.add_emailrule")
        return ("records.view_emailrule", "records.change_emailrule")

    def _rule(self, pk: int | None) -> EmailRule:
        return get_object_or_404(EmailRule, pk=pk) if pk is not None else EmailRule()

    def _render(
        self,
        request: HttpRequest,
        form: EmailRuleForm,
        conditions: BaseConditionFormSet,
        *,
        status: int = 200,
    ) -> HttpResponse:
        context = {
            "form": form,
            "conditions": conditions,
            "rule": form.instance,
            "budget_seconds": RULES_BUDGET_SECONDS,
        }
        return render(request, "records/rules/form.html", context, status=status)

    def get(self, request: HttpRequest, pk: int | None = None) -> HttpResponse:
        rule = self._rule(pk)
        return self._render(request, EmailRuleForm(instance=rule), condition_formset(rule=rule))

    def post(self, request: HttpRequest, pk: int | None = None) -> HttpResponse:
        rule = self._rule(pk)
        form = EmailRuleForm(request.POST, instance=rule)
        conditions = condition_formset(data=request.POST, rule=rule)
        # Both validated, so every mistake on the page is shown at once.
        if form.is_valid() & conditions.is_valid():
            try:
                rule = save_email_rule(
                    rule=form.save(commit=False),
                    integrations=form.cleaned_data["integrations"],
                    conditions=conditions.conditions(),
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                verb = "Created" if pk is None else "Saved"
                messages.success(request, f"{verb} the rule “{rule.name}”.")
                return redirect("rules:list")
        return self._render(request, form, conditions, status=400)


class EmailRuleMoveView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_emailrule"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        rule = get_object_or_404(EmailRule, pk=pk)
        up = request.POST.get("direction") == "up"
        if move_email_rule(rule=rule, up=up):
            messages.success(request, f"Moved “{rule.name}” {'up' if up else 'down'}.")
        else:
            where = "first" if up else "last"
            messages.info(request, f"“{rule.name}” is already {where}.")
        return redirect("rules:list")


class EmailRuleOrderView(StaffPermissionRequiredMixin, View):
    """The whole order at once, as a drag on the list sends it (servicedesk/rules.js)."""

    permission_required = "records.change_emailrule"

    def post(self, request: HttpRequest) -> HttpResponse:
        try:
            rule_ids = [int(value) for value in request.POST.getlist("rule")]
            reorder_email_rules(rule_ids=rule_ids)
        except ValueError:
            messages.error(request, "The new order could not be read: reload the page and retry.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, "Saved the new order of the rules.")
        return redirect("rules:list")


class EmailRuleEnableView(StaffPermissionRequiredMixin, View):
    permission_required = "records.change_emailrule"

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        rule = get_object_or_404(EmailRule, pk=pk)
        active = request.POST.get("enabled") == "1"
        set_email_rule_active(rule=rule, active=active)
        messages.success(request, f"{'Enabled' if active else 'Disabled'} “{rule.name}”.")
        return redirect("rules:list")


class EmailRuleDeleteView(StaffPermissionRequiredMixin, View):
    permission_required = "records.delete_emailrule"

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        rule = get_object_or_404(EmailRule, pk=pk)
        return render(request, "records/rules/confirm_delete.html", {"rule": rule})

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        rule = get_object_or_404(EmailRule, pk=pk)
        name = rule.name
        delete_email_rule(rule=rule)
        messages.success(request, f"Deleted the rule “{name}”.")
        return redirect("rules:list")
