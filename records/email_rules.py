"""Email rules: route and assign new records by what their first email says.

Rules run in order; a rule sees only the emails of the incoming integrations it applies to
(every one, or those chosen); a matching rule applies its actions (group, category, status,
priority, assigned admin), and one marked "stop" ends the run. Regex conditions use the
`regex` package with a timeout, like every admin-supplied pattern.

Evaluating is bounded and apart from applying. `evaluate_email_rules` needs no database and
runs before the write transaction opens (mailworker/pipeline/process.py), with one time budget
for all rules of the email and a fixed number of values per field; `apply_rule_outcome` then
only sets fields inside the transaction. An email with 150 crafted To addresses once held
SQLite's write lock for 35 s because the timeout was per value and the values were the
sender's to choose.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import regex
from django.db.models import Prefetch

from integrations.models import EmailIntegration
from records import write_behind
from records.models import Direction, EmailRule, EmailRuleCondition, Message, ServiceRecord

logger = logging.getLogger(__name__)

# All the regex conditions of all the rules for one email share this much time: the email's
# processing waits for it (before the write transaction, so nobody else does). Admins' usual
# patterns take microseconds; only a catastrophic one, or one fed crafted values, gets near.
RULES_BUDGET_SECONDS = 0.5
# At most this many values of one field are examined: the recipients are the sender's to
# choose (To, Cc), and no legitimate rule needs the 51st. The receiving server's
# Delivered-To comes first, so "recipient is support@..." still holds when To is stuffed.
MAX_VALUES_PER_FIELD = 50
# The actions a rule may take: its field -> the record's field.
ACTIONS = (
    ("set_group_id", "group_id"),
    ("set_category_id", "category_id"),
    ("set_status_id", "status_id"),
    ("set_priority", "priority"),
    ("assign_admin_id", "assigned_admin_id"),
)


@dataclass(frozen=True)
class RuleInput:
    sender: str
    recipients: list[str]
    subject: str
    body: str
    # The incoming integration that read the email; None (an email typed into "Try it"
    # without one) is seen only by the rules for every integration.
    integration_id: int | None = None

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2] if "@" in self.sender else ""


class RuleVerdict(enum.Enum):
    """What became of one rule for one email ("Try it" shows every rule's)."""

    FIRED = "fired"
    NOT_MATCHED = "not matched"
    OTHER_INTEGRATION = "not for this integration"
    OUT_OF_TIME = "ran out of time"
    AFTER_STOP = "not reached: an earlier rule stopped"


@dataclass(frozen=True)
class RuleTrace:
    rule: EmailRule
    verdict: RuleVerdict


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules decided for one email, before any record exists: the record fields to
    set, the rules that matched, and those whose regex ran out of the time budget (counted
    as not matched, and reported on the record)."""

    changes: dict[str, int] = field(default_factory=dict)
    applied: tuple[str, ...] = ()
    out_of_time: tuple[str, ...] = ()
    trace: tuple[RuleTrace, ...] = field(default=(), compare=False, repr=False)


NO_RULES = RuleOutcome()


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()


class _OutOfTime(Exception):
    """The email's budget ran out before this condition could be told."""


def _values(condition: EmailRuleCondition, facts: RuleInput) -> list[str]:
    Field = EmailRuleCondition.Field
    values = {
        Field.SENDER: [facts.sender],
        Field.SENDER_DOMAIN: [facts.sender_domain],
        Field.RECIPIENT: facts.recipients,
        Field.SUBJECT: [facts.subject],
        Field.BODY: [facts.body],
    }[condition.field]
    return values[:MAX_VALUES_PER_FIELD]


def _condition_matches(condition: EmailRuleCondition, facts: RuleInput, budget: _Budget) -> bool:
    """Raises _OutOfTime when a regex could not finish within what is left of the budget;
    the other operators are linear in the text and need no budget."""
    Operator = EmailRuleCondition.Operator
    wanted = condition.value
    for value in _values(condition, facts):
        if condition.operator == Operator.REGEX:
            remaining = budget.remaining()
            if remaining <= 0:
                raise _OutOfTime
            try:
                if regex.search(wanted, value, timeout=remaining):
                    return True
            except TimeoutError as exc:
                raise _OutOfTime from exc
            except regex.error as exc:
                logger.warning(
                    "email rule %s: pattern %r is invalid: %s", condition.rule_id, wanted, exc
                )
                return False
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


def condition_matches(
    condition: EmailRuleCondition, facts: RuleInput, *, budget_seconds: float = RULES_BUDGET_SECONDS
) -> bool:
    """One condition on its own (a budget of its own; out of time counts as no match)."""
    try:
        return _condition_matches(condition, facts, _Budget(budget_seconds))
    except _OutOfTime:
        return False


def _rule_matches(rule: EmailRule, facts: RuleInput, budget: _Budget) -> bool:
    """Stops at the first condition that decides (a miss for "all", a match for "any").
    Raises _OutOfTime when the conditions that could decide ran out of time."""
    conditions = list(rule.conditions.all())
    if not conditions:
        return False
    deciding = rule.match != EmailRule.Match.ALL  # the result that ends the evaluation
    out_of_time = False
    for condition in conditions:
        try:
            if _condition_matches(condition, facts, budget) == deciding:
                return deciding
        except _OutOfTime:
            out_of_time = True
    if out_of_time:
        raise _OutOfTime
    return not deciding


def applies_to_integration(rule: EmailRule, integration_id: int | None) -> bool:
    """Whether the rule sees emails read by this integration; reads the rule's chosen
    integrations from its prefetch (active_email_rules) when it has one."""
    if rule.all_integrations:
        return True
    return integration_id is not None and any(
        chosen.pk == integration_id for chosen in rule.integrations.all()
    )


def evaluate_email_rules(
    *,
    facts: RuleInput,
    rules: Iterable[EmailRule] | None = None,
    budget_seconds: float = RULES_BUDGET_SECONDS,
) -> RuleOutcome:
    """What the rules decide for a new record with these facts; reads no database when the
    rules come with their conditions and integrations prefetched (a pass reads them once,
    see lookups.py). The outcome's trace says what became of each rule."""
    budget = _Budget(budget_seconds)
    changes: dict[str, int] = {}
    applied: list[str] = []
    out_of_time: list[str] = []
    trace: list[RuleTrace] = []
    stopped = False
    for rule in active_email_rules() if rules is None else rules:
        if stopped:
            trace.append(RuleTrace(rule, RuleVerdict.AFTER_STOP))
            continue
        if not applies_to_integration(rule, facts.integration_id):
            trace.append(RuleTrace(rule, RuleVerdict.OTHER_INTEGRATION))
            continue
        try:
            if not _rule_matches(rule, facts, budget):
                trace.append(RuleTrace(rule, RuleVerdict.NOT_MATCHED))
                continue
        except _OutOfTime:
            out_of_time.append(rule.name)
            trace.append(RuleTrace(rule, RuleVerdict.OUT_OF_TIME))
            continue
        applied.append(rule.name)
        trace.append(RuleTrace(rule, RuleVerdict.FIRED))
        for action, record_field in ACTIONS:
            value = getattr(rule, action)
            if value is not None:
                changes[record_field] = value
        stopped = rule.stop_processing
    if out_of_time:
        logger.warning(
            "email rules %s ran out of their %.1f s for an email from %s and count as not matched",
            ", ".join(out_of_time),
            budget.seconds,
            facts.sender or "(no sender)",
        )
    return RuleOutcome(
        changes=changes, applied=tuple(applied), out_of_time=tuple(out_of_time), trace=tuple(trace)
    )


def apply_rule_outcome(*, record: ServiceRecord, outcome: RuleOutcome) -> None:
    """Set what the rules decided on the new record; no pattern is evaluated here. Rules that
    ran out of time are noted on the record, for staff only, so the admin sees why it was
    not routed."""
    if outcome.changes:
        for record_field, value in outcome.changes.items():
            setattr(record, record_field, value)
        if record.pk is not None:  # else it is inserted with its chunk, these values with it
            record.save(update_fields=[*outcome.changes, "updated_at"])
    if outcome.out_of_time:
        names = ", ".join(f"“{name}”" for name in outcome.out_of_time)
        note = Message(
            record=record,
            direction=Direction.INCOMING,
            is_internal=True,
            subject="Email rules ran out of time",
            text_body=(
                f"The email rules {names} could not be evaluated for this record's first email "
                f"within {RULES_BUDGET_SECONDS} s for all rules together, and counted as not "
                "matched. Check their regular expressions, or route the record by hand."
            ),
        )
        write_behind.save(note)  # before the email's own message, as it always was


def rule_matches(rule: EmailRule, facts: RuleInput) -> bool:
    """One rule on its own, with a budget of its own (out of time counts as no match)."""
    try:
        return _rule_matches(rule, facts, _Budget(RULES_BUDGET_SECONDS))
    except _OutOfTime:
        return False


def active_email_rules() -> list[EmailRule]:
    """The active rules in order, their conditions and chosen integrations loaded (only the
    integrations' keys: their secrets need no decrypting to scope a rule)."""
    return list(
        EmailRule.objects.filter(is_active=True).prefetch_related(
            "conditions",
            Prefetch("integrations", queryset=EmailIntegration.objects.only("pk")),
        )
    )


def apply_email_rules(
    *, record: ServiceRecord, facts: RuleInput, rules: Iterable[EmailRule] | None = None
) -> list[str]:
    """Evaluate and apply in one go, for a caller with one email and no transaction of its
    own to keep short; returns the names of the rules applied. The pipeline evaluates
    before its transaction instead (evaluate_email_rules, then apply_rule_outcome)."""
    outcome = evaluate_email_rules(facts=facts, rules=rules)
    apply_rule_outcome(record=record, outcome=outcome)
    return list(outcome.applied)
