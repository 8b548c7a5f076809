"""Forms of Settings > Email Rules. They shape input and say what is wrong with it; the model's
clean() and records.email_rule_services decide."""

from __future__ import annotations

from email.utils import getaddresses, parseaddr
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from integrations.models import EmailIntegration
from records import selectors
from records.email_rule_services import (
    ConditionInput,
    incoming_integrations,
    integrations_to_choose,
)
from records.email_rules import RuleInput
from records.forms import AgentChoiceField
from records.models import EmailRule, EmailRuleCondition, User

CONTINUE, STOP = "continue", "stop"
ALL, CHOSEN = "all", "chosen"
# Empty rows for new conditions under the existing ones: enough without JavaScript, and a
# rule needing more is saved and edited again.
EXTRA_CONDITION_ROWS = 3


class EmailRuleForm(forms.ModelForm):
    when_matched = forms.ChoiceField(
        label="When this rule matches",
        choices=[(CONTINUE, "Continue with the next rules"), (STOP, "Stop: apply no later rule")],
        widget=forms.RadioSelect,
        initial=CONTINUE,
    )
    applies_to = forms.ChoiceField(
        label="Applies to",
        choices=[
            (ALL, "All incoming integrations, also those added later"),
            (CHOSEN, "Only the integrations chosen below"),
        ],
        widget=forms.RadioSelect,
        initial=ALL,
    )
    integrations = forms.ModelMultipleChoiceField(
        queryset=EmailIntegration.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Integrations",
    )
    assign_admin = AgentChoiceField(
        queryset=User.objects.none(), required=False, label="Assign to admin"
    )

    class Meta:
        model = EmailRule
        fields = [
            "name",
            "is_active",
            "match",
            "set_group",
            "set_category",
            "set_status",
            "set_priority",
            "assign_admin",
        ]
        labels = {
            "is_active": "Enabled",
            "match": "Conditions combined",
            "set_group": "Set group",
            "set_category": "Set category",
            "set_status": "Set status",
            "set_priority": "Set priority",
        }
        widgets = {"match": forms.RadioSelect}
        error_messages = {
            "name": {"unique": "Another rule already has this name. Rule names are unique."}
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rule: EmailRule = self.instance
        chosen = list(rule.integrations.values_list("pk", flat=True)) if rule.pk else []
        self.fields["integrations"].queryset = integrations_to_choose(chosen=chosen)
        agents = selectors.agents()
        if rule.assign_admin_id:
            agents = agents | User.objects.filter(pk=rule.assign_admin_id)
        self.fields["assign_admin"].queryset = agents
        self.fields["match"].choices = EmailRule.Match.choices
        if rule.pk:
            self.initial["when_matched"] = STOP if rule.stop_processing else CONTINUE
            self.initial["applies_to"] = ALL if rule.all_integrations else CHOSEN
            self.initial["integrations"] = chosen
        for name in ("set_group", "set_category", "set_status", "set_priority", "assign_admin"):
            self.fields[name].empty_label = "(leave as it is)"
        self.fields["set_priority"].choices = [
            ("", "(leave as it is)"),
            *self.fields["set_priority"].choices[1:],
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("applies_to") == CHOSEN and not data.get("integrations"):
            self.add_error(
                "integrations",
                "Choose at least one integration, or apply the rule to all integrations.",
            )
        sets_something = any(
            data.get(name) not in (None, "")
            for name in ("set_group", "set_category", "set_status", "set_priority", "assign_admin")
        )
        if not sets_something and data.get("when_matched") != STOP:
            raise ValidationError(
                "This rule sets nothing and lets the next rules run, so it would have no effect. "
                "Choose an action (group, status, category, priority or admin), or choose "
                "“Stop” to keep later rules from applying to these emails."
            )
        return data

    def _post_clean(self) -> None:
        # The model's clean sees the radio buttons' choices as its own fields.
        self.instance.stop_processing = self.cleaned_data.get("when_matched") == STOP
        self.instance.all_integrations = self.cleaned_data.get("applies_to", ALL) == ALL
        super()._post_clean()


class ConditionForm(forms.ModelForm):
    class Meta:
        model = EmailRuleCondition
        fields = ["field", "operator", "value"]
        labels = {"field": "Field", "operator": "Operator", "value": "Value"}
        error_messages = {
            "field": {"required": "Choose what this condition looks at."},
            "value": {"required": "Write what to look for (or tick Remove)."},
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["field"].choices = [("", "(choose)"), *EmailRuleCondition.Field.choices]
        self.fields["value"].widget.attrs["placeholder"] = "e.g. vpn, example.com or ^Invoice"


class BaseConditionFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        if not self.conditions():
            raise ValidationError(
                "A rule needs at least one condition: fill in a row below (field, operator, "
                "value). A rule without conditions would never match."
            )

    def conditions(self) -> list[ConditionInput]:
        return [
            ConditionInput(
                field=form.cleaned_data["field"],
                operator=form.cleaned_data["operator"],
                value=form.instance.value,  # as the model's clean normalised it
            )
            for form in self.forms
            if form.cleaned_data
            and not form.cleaned_data.get("DELETE")
            and form.cleaned_data.get("field")
        ]


ConditionFormSet = forms.formset_factory(
    ConditionForm, formset=BaseConditionFormSet, extra=EXTRA_CONDITION_ROWS, can_delete=True
)


def condition_formset(*, data: Any = None, rule: EmailRule | None = None) -> BaseConditionFormSet:
    initial = (
        [
            {"field": c.field, "operator": c.operator, "value": c.value}
            for c in rule.conditions.all()
        ]
        if rule is not None and rule.pk
        else []
    )
    return ConditionFormSet(data=data, initial=initial, prefix="conditions")


class TryRulesForm(forms.Form):
    """An example email for "Try it": nothing is saved or sent."""

    sender = forms.CharField(
        label="From", max_length=998, help_text="An address, or “Name <address>”."
    )
    recipients = forms.CharField(
        label="To",
        max_length=5000,
        required=False,
        help_text="One or more addresses, separated by commas.",
    )
    subject = forms.CharField(label="Subject", max_length=998, required=False)
    body = forms.CharField(label="Body", widget=forms.Textarea(attrs={"rows": 5}), required=False)
    integration = forms.ModelChoiceField(
        queryset=EmailIntegration.objects.none(),
        required=False,
        label="Received by",
        empty_label="(none: only rules for all integrations)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["integration"].queryset = incoming_integrations()

    def clean_sender(self) -> str:
        _name, address = parseaddr(self.cleaned_data["sender"])
        if "@" not in address:
            raise ValidationError(
                "Write the sender's email address, e.g. jane@example.com or "
                "Jane Doe <jane@example.com>."
            )
        return address.strip().lower()

    def clean_recipients(self) -> list[str]:
        text = self.cleaned_data["recipients"]
        return [address.strip().lower() for _name, address in getaddresses([text]) if address]

    def facts(self) -> RuleInput:
        data = self.cleaned_data
        integration = data.get("integration")
        return RuleInput(
            sender=data["sender"],
            recipients=data["recipients"],
            subject=data["subject"],
            body=data["body"],
            integration_id=integration.pk if integration else None,
        )
