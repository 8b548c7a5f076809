"""An admin invites an agent in a real browser; the agent opens the link of the email that
reached the real aiosmtpd, chooses a password, logs in and works the records."""

from __future__ import annotations

import email
import re
from concurrent.futures import ThreadPoolExecutor
from email.policy import default as default_policy

import pytest
from django.db import connections
from playwright.sync_api import Page, expect

from mailworker.delivery import send_due
from records.models import User
from records.roles import AGENT

pytestmark = pytest.mark.browser
PASSWORD = "a long new password 42"


def drain_outbox() -> None:
    try:
        send_due()
    finally:
        connections.close_all()


def test_an_admin_invites_an_agent_who_sets_a_password_and_sees_the_records(
    admin_page: Page, smtp_server, smtp_integration, quiet
) -> None:
    smtp_integration()
    smtp_server.clear()
    page = admin_page

    page.get_by_role("link", name="Settings › Users").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_role("link", name="Invite an agent").click()
    page.get_by_label("First name").fill("Ada")
    page.get_by_label("Last name").fill("Lovelace")
    page.get_by_label("Email", exact=True).fill("ada@desk.test")
    expect(page.get_by_role("checkbox", name=re.compile(r"^Agent: "))).to_be_checked()
    page.get_by_role("button", name="Send invitation").click()

    expect(page.get_by_role("status")).to_contain_text("Invitation sent to ada@desk.test")
    expect(page.get_by_role("heading", name="Ada Lovelace")).to_be_visible()
    assert [g.name for g in User.objects.get(email="ada@desk.test").groups.all()] == [AGENT]

    # The worker's part: drain the outbox, off this thread, whose event loop Playwright holds
    # (the SMTP client runs its own).
    with ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(drain_outbox).result()
    (message,) = [m for m in smtp_server.messages if "ada@desk.test" in m.rcpt_tos]
    invitation = email.message_from_bytes(message.raw, policy=default_policy)
    text = invitation.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"https?://\S+/account/set-password/\S+/", text).group(0)

    agent = page.context.browser.new_context()
    try:
        agent_page = agent.new_page()
        agent_page.goto(link)
        expect(agent_page.get_by_role("heading", name="Choose your password")).to_be_visible()
        agent_page.get_by_label("New password", exact=True).fill(PASSWORD)
        agent_page.get_by_label("New password again").fill(PASSWORD)
        agent_page.get_by_role("button", name="Set password").click()
        expect(agent_page.get_by_role("heading", name="Your password is set")).to_be_visible()

        agent_page.get_by_role("link", name="Log in").click()
        agent_page.locator("#id_username").fill("ada@desk.test")
        agent_page.locator("#id_password").fill(PASSWORD)
        agent_page.get_by_role("button", name="Log in").click()

        expect(agent_page.get_by_role("heading", name="Service records")).to_be_visible()
        nav = agent_page.locator("header nav")
        expect(nav.get_by_role("link", name="Quarantine")).to_be_visible()
        expect(nav.get_by_role("link", name="Settings › Users")).to_have_count(0)
    finally:
        agent.close()
