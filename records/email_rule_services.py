"""Settings > Email Rules: keeping the list of rules (create, change, order, enable, delete)
and "Try it", which evaluates an example email exactly as the mail engine would, changing
nothing. Evaluation itself is records.email_rules'."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Prefetch, Q, QuerySet

from integrations.models import EmailIntegration
from records.email_rules import RuleInput, RuleOutcome, active_email_rules, evaluate_email_rules
from records.models import (
    AdminGroup,
    Category,
    EmailRule,
    EmailRuleCondition,
    Priority,
    Status,
    User,
)


@dataclass(frozen=True)
class ConditionInput:
    field: str
    operator: str
    value: str


def email_rules_in_order() -> QuerySet[EmailRule]:
    """Every rule, enabled or not, in evaluation order, with what the list shows of each."""
    return EmailRule.objects.select_related(
        "set_group", "set_category", "set_status", "assign_admin"
    ).prefetch_related(
        "conditions",
        Prefetch("integrations", queryset=EmailIntegration.objects.only("pk", "name")),
    )


def incoming_integrations() -> QuerySet[EmailIntegration]:
    """What an example email in "Try it" can be received by: the integrations that read mail."""
    return (
        EmailIntegration.objects.filter(incoming_enabled=True).only("pk", "name").order_by("name")
    )


def integrations_to_choose(*, chosen: list[int]) -> QuerySet[EmailIntegration]:
    """What a rule can be scoped to: the integrations that read mail, and those it has, even
    if their incoming side was turned off since (so saving does not drop them unseen)."""
    return (
        EmailIntegration.objects.filter(Q(incoming_enabled=True) | Q(pk__in=chosen))
        .only("pk", "name")
        .order_by("name")
    )


def _next_order() -> int:
    highest = EmailRule.objects.aggregate(highest=Max("order"))["highest"]
    return 0 if highest is None else highest + 1


@transaction.atomic
def save_email_rule(
    *,
    rule: EmailRule,
    integrations: Iterable[EmailIntegration],
    conditions: list[ConditionInput],
) -> EmailRule:
    """Save a rule with its conditions (they replace the old ones: the screen always sends
    the whole list) and its chosen integrations; a new rule goes last in the order."""
    if rule.pk is None:
        rule.order = _next_order()
    rule.full_clean()
    rule.save()
    rule.integrations.set([] if rule.all_integrations else list(integrations))
    rule.conditions.all().delete()
    for condition in conditions:
        row = EmailRuleCondition(
            rule=rule, field=condition.field, operator=condition.operator, value=condition.value
        )
        row.full_clean()
        row.save()
    return rule


@transaction.atomic
def move_email_rule(*, rule: EmailRule, up: bool) -> bool:
    """Swap the rule with its neighbour in the order; False when it is already first (up)
    or last (down). The orders are renumbered 0, 1, 2 ... first, so rules saved with the
    same order (the old default 0) move predictably."""
    rules = list(EmailRule.objects.select_for_update().order_by("order", "id"))
    position = next(index for index, each in enumerate(rules) if each.pk == rule.pk)
    other = position - 1 if up else position + 1
    if not 0 <= other < len(rules):
        return False
    rules[position], rules[other] = rules[other], rules[position]
    for order, each in enumerate(rules):
        if each.order != order:
            each.order = order
            each.save(update_fields=["order"])
    return True


@transaction.atomic
def reorder_email_rules(*, rule_ids: list[int]) -> None:
    """Put every rule in the given order (a drag on the list sends them all)."""
    rules = {rule.pk: rule for rule in EmailRule.objects.select_for_update()}
    if sorted(rule_ids) != sorted(rules):
        raise ValidationError(
            "The rules changed while you were dragging (someone added or deleted one). "
            "This is the list as it is now: drag again.",
            code="stale_order",
        )
    for order, pk in enumerate(rule_ids):
        rule = rules[pk]
        if rule.order != order:
            rule.order = order
            rule.save(update_fields=["order"])


def set_email_rule_active(*, rule: EmailRule, active: bool) -> None:
    rule.is_active = active
    rule.save(update_fields=["is_active"])


def delete_email_rule(*, rule: EmailRule) -> None:
    rule.delete()


def try_email_rules(*, facts: RuleInput) -> RuleOutcome:
    """What the enabled rules would do to a record this email opened, saving nothing."""
    return evaluate_email_rules(facts=facts, rules=active_email_rules())


# The order "Try it" lists what a record would get in, as the rule form lists its actions.
DESCRIBED_FIELDS = {
    "assigned_admin_id": ("Assigned admin", User),
    "group_id": ("Group", AdminGroup),
    "status_id": ("Status", Status),
    "category_id": ("Category", Category),
    "priority": ("Priority", None),
}


def describe_changes(changes: dict[str, int]) -> list[tuple[str, str]]:
    """A rule outcome's record fields as an admin reads them: ("Group", "Network"), ..."""
    described = []
    for record_field, (label, model) in DESCRIBED_FIELDS.items():
        if record_field not in changes:
            continue
        value = changes[record_field]
        if model is None:
            described.append((label, Priority(value).label))
            continue
        found = model.objects.filter(pk=value).first()
        described.append((label, _display_name(found) if found else f"(deleted #{value})"))
    return described


def _display_name(found: object) -> str:
    if isinstance(found, User):
        return found.get_full_name() or found.get_username()
    return str(found)
