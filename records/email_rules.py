"""Email rules: route and assign new records by what their first email says.

Rules run in order; a matching rule applies its actions (group, category, priority,
assigned admin), and one marked "stop" ends the run. Regex conditions use the `regex`
package with a timeout, like every admin-supplied pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import regex

from records.models import EmailRule, EmailRuleCondition, ServiceRecord

logger = logging.getLogger(__name__)
REGEX_TIMEOUT_SECONDS = 0.2


@dataclass(frozen=True)
class RuleInput:
    sender: str
    recipients: list[str]
    subject: str
    body: str


def condition_matches(condition: EmailRuleCondition, facts: RuleInput) -> bool:
    Field, Operator = EmailRuleCondition.Field, EmailRuleCondition.Operator
    values = {
        Field.SENDER: [facts.sender],
        Field.RECIPIENT: facts.recipients,
        Field.SUBJECT: [facts.subject],
        Field.BODY: [facts.body],
    }[condition.field]
    wanted = condition.value
    for value in values:
        if condition.operator == Operator.REGEX:
            try:
                if regex.search(wanted, value, timeout=REGEX_TIMEOUT_SECONDS):
                    return True
            except (regex.error, TimeoutError) as exc:
                logger.warning(
                    "email rule %s: pattern %r failed: %s", condition.rule_id, wanted, exc
                )
            continue
        value, target = value.lower(), wanted.lower()
        if (
            (condition.operator == Operator.CONTAINS and target in value)
            or (condition.operator == Operator.EQUALS and target == value)
            or (condition.operator == Operator.STARTS_WITH and value.startswith(target))
            or (condition.operator == Operator.ENDS_WITH and value.endswith(target))
        ):
            return True
    return False


def rule_matches(rule: EmailRule, facts: RuleInput) -> bool:
    results = [condition_matches(condition, facts) for condition in rule.conditions.all()]
    if not results:
        return False
    return all(results) if rule.match == EmailRule.Match.ALL else any(results)


def active_email_rules() -> list[EmailRule]:
    """The active rules in order, their conditions loaded."""
    return list(EmailRule.objects.filter(is_active=True).prefetch_related("conditions"))


def apply_email_rules(
    *, record: ServiceRecord, facts: RuleInput, rules: Iterable[EmailRule] | None = None
) -> list[str]:
    """Apply the matching rules to a new record; returns the names of the rules applied.
    `rules`: the active rules already loaded (a pass over a mailbox reads them once)."""
    applied = []
    changed: set[str] = set()
    for rule in active_email_rules() if rules is None else rules:
        if not rule_matches(rule, facts):
            continue
        applied.append(rule.name)
        for action, field in (
            ("set_group_id", "group_id"),
            ("set_category_id", "category_id"),
            ("set_priority", "priority"),
            ("assign_admin_id", "assigned_admin_id"),
        ):
            value = getattr(rule, action)
            if value is not None:
                setattr(record, field, value)
                changed.add(field.removesuffix("_id"))
        if rule.stop_processing:
            break
    if changed:
        record.save(update_fields=[*changed, "updated_at"])
    return applied
