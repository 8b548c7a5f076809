"""An admin writes an email rule in Settings > Email Rules, tries it on an example email, and
sees the next email delivered into the real Dovecot routed by it after a worker pass."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from mailworker.pipeline.passes import run_pass
from records.models import AdminGroup, EmailRule, EmailRuleCondition, ServiceRecord
from tests.mail import make_email

pytestmark = pytest.mark.browser


def test_admin_creates_a_rule_and_an_incoming_email_is_routed_by_it(
    admin_page: Page, dovecot, dovecot_integration, tmp_path
) -> None:
    support = dovecot_integration(name="Support mailbox")
    dovecot_integration(name="Sales mailbox")
    AdminGroup.objects.create(name="Network team")
    page = admin_page
    page.reload()  # the nav is the same; the integrations now exist

    page.get_by_role("link", name="Settings › Email Rules").click()
    expect(page.get_by_role("heading", name="Email rules")).to_be_visible()
    page.get_by_role("link", name="New rule").click()

    page.get_by_label("Name", exact=True).fill("VPN to the network team")
    page.get_by_label("Only the integrations chosen below").check()
    page.get_by_label("Support mailbox").check()
    page.get_by_label("Any condition").check()
    page.get_by_label("Condition 1 field").select_option(label="Subject")
    page.get_by_label("Condition 1 operator").select_option(label="matches regex")
    page.get_by_label("Condition 1 value").fill(r"(?i)\bvpn\b")
    page.get_by_label("Condition 2 field").select_option(label="Sender domain")
    page.get_by_label("Condition 2 operator").select_option(label="equals")
    page.get_by_label("Condition 2 value").fill("branch.customer.test")
    page.get_by_label("Set group").select_option(label="Network team")
    page.get_by_label("Set status").select_option(label="In Progress")
    page.get_by_label("Stop: apply no later rule").check()
    page.screenshot(path=str(tmp_path / "rules-form.png"), full_page=True)
    page.get_by_role("button", name="Create rule").click()

    expect(page.get_by_role("status").first).to_contain_text(
        "Created the rule “VPN to the network team”."
    )
    row = page.locator("#email-rules tr[data-rule='VPN to the network team']")
    expect(row).to_contain_text("Support mailbox")
    expect(row).to_contain_text("Group: Network team")
    expect(row).to_contain_text("Status: In Progress")
    expect(row).to_contain_text("Stop")

    # Try it: an example email, nothing saved.
    page.get_by_label("From", exact=True).fill("Jane Doe <jane@customer.test>")
    page.get_by_label("Subject", exact=True).fill("VPN drops every hour")
    page.get_by_label("Received by").select_option(label="Support mailbox")
    page.get_by_role("button", name="Try the rules").click()
    result = page.locator("#try-result")
    expect(result).to_contain_text("Would fire: “VPN to the network team”.")
    expect(result.locator("dl.would-set")).to_contain_text("Network team")
    expect(result.locator("dl.would-set")).to_contain_text("In Progress")
    page.screenshot(path=str(tmp_path / "rules-list.png"), full_page=True)
    assert not ServiceRecord.objects.exists()

    # The real thing: an email into the Support mailbox, imported by a worker pass.
    dovecot.deliver(
        support.incoming_username,
        [make_email(subject="VPN drops every hour", body="Since the update.")],
    )
    report = run_pass(integration=support)
    assert not report.failed, report.errors
    record = ServiceRecord.objects.get()

    page.get_by_role("link", name="Records", exact=True).click()
    page.get_by_role("link", name="VPN drops every hour").click()
    details = page.locator("#record-details")
    expect(details.locator(".status")).to_have_text("In Progress")
    expect(details).to_contain_text("Network team")
    assert (record.group.name, record.status.name) == ("Network team", "In Progress")


def test_dragging_a_rule_changes_the_evaluation_order(admin_page: Page) -> None:
    for order, name in enumerate(["First", "Second", "Third"]):
        created = EmailRule.objects.create(name=name, order=order, stop_processing=True)
        EmailRuleCondition.objects.create(
            rule=created, field="subject", operator="contains", value="x"
        )
    page = admin_page
    page.goto("/settings/rules/")
    rows = page.locator("#email-rules tbody tr")
    expect(rows).to_have_count(3)

    rows.nth(2).drag_to(rows.nth(0), target_position={"x": 20, "y": 5})

    expect(page.get_by_role("status").first).to_contain_text("Saved the new order of the rules.")
    expect(rows.nth(0)).to_have_attribute("data-rule", "Third")
    names = list(EmailRule.objects.order_by("order").values_list("name", flat=True))
    assert names == ["Third", "First", "Second"]
