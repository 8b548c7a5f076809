"""The Test buttons of an integration in a real browser, against the real aiosmtpd and
Dovecot: what the admin sees after clicking them."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def open_integration(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def test_test_sends_an_email_and_shows_the_server_s_answer(
    admin_page: Page, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="tls", name="Outbound desk")
    smtp_server.clear()
    page = admin_page
    page.reload()
    open_integration(page, "Outbound desk")

    page.get_by_label("Send a test email to").fill("jane@customer.test")
    page.get_by_role("button", name="Test", exact=True).click()

    outcome = page.locator("#outgoing-test #outgoing-test-outcome")
    expect(outcome).to_contain_text("Sent to jane@customer.test")
    expect(outcome).to_contain_text(re.compile(r"The server answered: 250 2\.0\.0 Ok"))
    expect(page.locator(".test-error")).to_have_count(0)
    # Where the button is, and on screen: the page came back at the Test panel.
    expect(page).to_have_url(re.compile(r"#outgoing-test$"))
    button = page.get_by_role("button", name="Test", exact=True)
    expect(button).to_be_in_viewport()
    expect(outcome).to_be_in_viewport()
    button_box, outcome_box = button.bounding_box(), outcome.bounding_box()
    assert outcome_box["x"] > button_box["x"] + button_box["width"]  # beside it
    assert abs(outcome_box["y"] - button_box["y"]) < button_box["height"]
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["jane@customer.test"]
    # The typed address stays for the next try.
    expect(page.get_by_label("Send a test email to")).to_have_value("jane@customer.test")

    # A reload shows the page again: no second test email, and the outcome was shown once.
    page.reload()
    expect(page.get_by_role("heading", name="Outbound desk")).to_be_visible()
    expect(page.locator("#outgoing-test-outcome")).to_have_count(0)
    assert len(smtp_server.messages) == 1


def test_a_wrong_smtp_password_is_shown_next_to_the_password_field(
    admin_page: Page, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="ssl", name="Wrong password", smtp_password="not the password")
    smtp_server.clear()
    page = admin_page
    page.reload()
    open_integration(page, "Wrong password")

    page.get_by_label("Send a test email to").fill("jane@customer.test")
    page.get_by_role("button", name="Test", exact=True).click()

    error = page.locator("#outgoing-fields #field-smtp_password .test-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Authentication failed")
    expect(error).to_contain_text("535")
    expect(page.locator("#outgoing-test #outgoing-test-outcome")).to_contain_text("Test failed")
    # The panel's link leads to the field the error concerns.
    page.locator("#outgoing-test-outcome").get_by_role("link", name="Go to Password").click()
    expect(page).to_have_url(re.compile(r"#field-smtp_password$"))
    expect(page.locator("#field-smtp_password")).to_be_in_viewport()
    assert smtp_server.messages == []


def test_test_connection_shows_how_many_emails_wait(
    admin_page: Page, dovecot, dovecot_integration
) -> None:
    integration = dovecot_integration(name="Support mailbox")
    dovecot.deliver(
        integration.incoming_username,
        [f"Subject: {n}\r\nMessage-ID: <{n}@c.test>\r\n\r\nHi\r\n".encode() for n in range(2)],
    )
    page = admin_page
    page.reload()
    open_integration(page, "Support mailbox")

    page.get_by_role("button", name="Test connection", exact=True).click()

    expect(page.locator("#incoming-test #incoming-test-outcome")).to_contain_text(
        "folder INBOX: 2 emails waiting."
    )
