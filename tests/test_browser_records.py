"""An agent works a record in a real browser: opens it from the list, replies by email and
changes its status."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from records.models import Direction
from records.services import add_message, create_record, get_or_create_end_user

pytestmark = pytest.mark.browser


@pytest.fixture
def record():
    requester, _ = get_or_create_end_user(email="jane@customer.test", display_name="Jane Doe")
    record = create_record(title="Printer on fire", description="", requester=requester)
    add_message(
        record=record,
        direction=Direction.INCOMING,
        from_address="jane@customer.test",
        subject="Printer on fire",
        text_body="It is smoking.",
        to_addresses=["support@desk.test"],
    )
    return record


def test_agent_replies_and_changes_the_status(admin_page: Page, record) -> None:
    page = admin_page
    page.get_by_role("link", name="Records", exact=True).click()
    expect(page.get_by_role("heading", name="Service records")).to_be_visible()
    page.get_by_placeholder("#123, title, requester").fill(f"#{record.pk}")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Printer on fire").click()
    expect(page.get_by_role("heading", name=f"#{record.pk} Printer on fire")).to_be_visible()
    log = page.locator("#message-log")
    expect(log.locator(".message.in")).to_contain_text("It is smoking.")

    page.get_by_label("Reply", exact=True).fill("Unplug it and step away.")
    page.get_by_role("button", name="Send reply").click()

    expect(page.get_by_role("status")).to_contain_text(f"Reply to #{record.pk} queued")
    outgoing = log.locator(".message.out")
    expect(outgoing).to_have_count(1)
    expect(outgoing).to_contain_text("Outgoing")
    expect(outgoing).to_contain_text("Unplug it and step away.")
    expect(log.locator(".message").last).to_contain_text("Unplug it and step away.")

    page.get_by_label("Status").select_option(label="In Progress")
    page.get_by_role("button", name="Save changes").click()

    expect(page.get_by_role("status")).to_contain_text("Changed status: New → In Progress.")
    expect(page.locator("#record-details .status")).to_have_text("In Progress")
