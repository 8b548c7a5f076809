"""Email rules (issue 14): scoped to incoming integrations (chosen ones, or all, including
integrations added later), conditions on the sender's domain and the recipient, and the
status action. Evaluated as the mail engine does, and through real Dovecot mailboxes and
passes."""

from __future__ import annotations

from typing import Any

import pytest

from mailworker.pipeline.passes import run_pass
from records.email_rules import RuleInput, RuleVerdict, evaluate_email_rules
from records.models import AdminGroup, EmailRule, EmailRuleCondition, ServiceRecord, Status
from tests.conftest import incoming_imap
from tests.mail import make_email

pytestmark = pytest.mark.django_db


def rule(name: str, order: int, *conditions: tuple[str, str, str], **fields: Any) -> EmailRule:
    created = EmailRule.objects.create(name=name, order=order, **fields)
    for field, operator, value in conditions:
        EmailRuleCondition.objects.create(rule=created, field=field, operator=operator, value=value)
    return created


def facts(**overrides: Any) -> RuleInput:
    values: dict[str, Any] = {
        "sender": "jane@sub.customer.test",
        "recipients": ["support@desk.test"],
        "subject": "Printer on floor 3",
        "body": "It prints blank pages.",
        "integration_id": None,
    }
    values.update(overrides)
    return RuleInput(**values)


def fired(**overrides: Any) -> tuple[str, ...]:
    return evaluate_email_rules(facts=facts(**overrides)).applied


def test_sender_domain_is_the_part_after_the_at_sign() -> None:
    rule("equals", 0, ("sender_domain", "equals", "sub.customer.test"), set_priority=1)
    rule("ends with", 1, ("sender_domain", "ends_with", "customer.test"), set_priority=2)
    rule("regex", 2, ("sender_domain", "regex", r"^(sub\.)?customer\.test$"), set_priority=3)
    rule("not the local part", 3, ("sender_domain", "contains", "jane"), set_priority=4)
    assert fired() == ("equals", "ends with", "regex")
    assert fired(sender="jane@customer.test") == ("ends with", "regex")


def test_recipient_conditions_see_every_recipient() -> None:
    rule("sales", 0, ("recipient", "equals", "sales@desk.test"), set_priority=1)
    assert fired() == ()
    assert fired(recipients=["support@desk.test", "Sales@Desk.test"]) == ("sales",)


def test_a_rule_for_chosen_integrations_sees_only_their_emails(make_integration) -> None:
    support = make_integration(**incoming_imap(name="Support"))
    sales = make_integration(**incoming_imap(name="Sales", incoming_username="sales@example.com"))
    scoped = rule("sales only", 0, ("subject", "contains", "printer"), all_integrations=False)
    scoped.set_priority = 1
    scoped.save()
    scoped.integrations.set([sales])
    rule("everywhere", 1, ("subject", "contains", "printer"), set_priority=2)

    assert fired(integration_id=sales.pk) == ("sales only", "everywhere")
    assert fired(integration_id=support.pk) == ("everywhere",)
    # An example email typed without an integration: only rules for all integrations.
    outcome = evaluate_email_rules(facts=facts())
    assert [(step.rule.name, step.verdict) for step in outcome.trace] == [
        ("sales only", RuleVerdict.OTHER_INTEGRATION),
        ("everywhere", RuleVerdict.FIRED),
    ]


def test_the_trace_says_what_became_of_each_rule() -> None:
    network = AdminGroup.objects.create(name="Network")
    rule("no", 0, ("subject", "contains", "vpn"), set_priority=1)
    rule("stops", 1, ("subject", "contains", "printer"), set_group=network, stop_processing=True)
    rule("after", 2, ("subject", "contains", "printer"), set_priority=2)
    outcome = evaluate_email_rules(facts=facts())
    assert [(step.rule.name, step.verdict) for step in outcome.trace] == [
        ("no", RuleVerdict.NOT_MATCHED),
        ("stops", RuleVerdict.FIRED),
        ("after", RuleVerdict.AFTER_STOP),
    ]
    assert outcome.changes == {"group_id": network.pk}


@pytest.fixture
def mailboxes(dovecot, dovecot_integration):
    """Two incoming integrations on the real Dovecot, and a way to deliver to one and run its
    pass."""

    class Mailboxes:
        support = dovecot_integration(protocol="imap", encryption="ssl", name="Support")
        sales = dovecot_integration(protocol="imap", encryption="ssl", name="Sales")

        def receive(self, integration, raw: bytes) -> ServiceRecord:
            dovecot.deliver(integration.incoming_username, [raw])
            report = run_pass(integration=integration)
            assert not report.failed, report.errors
            return ServiceRecord.objects.latest("pk")

    return Mailboxes()


def test_incoming_mail_is_routed_by_integration_sender_domain_and_status(
    mailboxes, dovecot_integration
) -> None:
    in_progress = Status.objects.get(name="In Progress")
    sales_team = AdminGroup.objects.create(name="Sales team")
    scoped = rule(
        "Sales mailbox",
        0,
        ("sender_domain", "equals", "customer.test"),
        all_integrations=False,
        set_group=sales_team,
        set_status=in_progress,
    )
    scoped.integrations.set([mailboxes.sales])
    rule("Everyone's VIPs", 1, ("sender", "equals", "boss@vip.test"), set_priority=1)

    routed = mailboxes.receive(mailboxes.sales, make_email(subject="Quote please"))
    assert (routed.group, routed.status) == (sales_team, in_progress)

    other = mailboxes.receive(mailboxes.support, make_email(subject="Printer broken"))
    assert (other.group, other.status.name) == (None, "New")

    # "All integrations" includes one added after the rule was written.
    later = dovecot_integration(protocol="imap", encryption="ssl", name="Added later")
    vip = mailboxes.receive(later, make_email(sender="Boss <boss@vip.test>", subject="Hi"))
    assert vip.priority == 1
