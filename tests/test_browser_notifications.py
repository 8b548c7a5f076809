"""Settings > Notifications in a real browser: an admin rewords the "Record opened" email,
previews it, saves it, and then receives it in that wording when an email opens a record
(real Dovecot, the real pass, real aiosmtpd). And the banner an admin without an email
address sees on every page, with its link to where to add one."""

from __future__ import annotations

import email
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.policy import default as default_policy
from pathlib import Path
from typing import TypeVar

import pytest
from django.db import connection
from playwright.sync_api import Page, expect

from mailworker.admin_banner import forget_admin_banner
from mailworker.delivery import send_due
from mailworker.pipeline.passes import run_pass
from records.models import ServiceRecord
from tests.browser import _log_in
from tests.conftest import ADMIN_PASSWORD
from tests.mail import make_email

pytestmark = pytest.mark.browser
T = TypeVar("T")

VIEWPORT = {"width": 1280, "height": 900}


def in_another_thread(work: Callable[[], T]) -> T:
    """What the worker does, off the test thread: Playwright's event loop runs there, and
    sending (aiosmtplib) starts an event loop of its own."""

    def run() -> T:
        try:
            return work()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(run).result()


def test_admin_rewords_the_record_opened_email_and_receives_it(
    admin_page: Page, dovecot, dovecot_integration, smtp_server, smtp_integration, tmp_path: Path
) -> None:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    smtp_server.clear()
    page = admin_page
    page.set_viewport_size(VIEWPORT)

    page.get_by_role("link", name="Settings › Notifications").click()
    expect(page.get_by_role("heading", name="Notifications", exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "notify-settings.png", full_page=True)
    page.locator("#email-texts tr[data-key=record_created_admin] a").click()
    expect(page.get_by_role("heading", name="Record opened")).to_be_visible()

    page.get_by_label("Subject").fill("New ticket from {{ record.requester.email }}")
    page.get_by_label("Text").fill(
        "{{ record.requester.name }} wrote about “{{ record.title }}”:\n\n"
        "{{ record.description|truncatechars:200 }}\n\nPriority {{ record.priority }}."
    )
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-subject")).to_have_text(
        "New ticket from jane@customer.example [#123]"
    )
    expect(page.locator("#preview-text")).to_contain_text("Jane Doe wrote about “Printer on")
    page.screenshot(path=tmp_path / "notify-edit-text.png", full_page=True)

    page.get_by_label("Text").fill("{% if record.title %}unclosed")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#text-errors")).to_contain_text("Line 1: Unclosed tag on line 1: 'if'")

    page.get_by_label("Text").fill(
        "{{ record.requester.name }} wrote about “{{ record.title }}”.\n"
        "Priority {{ record.priority }}."
    )
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("saved: it is sent from now on")
    expect(page.get_by_role("button", name="Reset to the default")).to_be_visible()

    # An email opens a record; the admin's notification goes out in the new wording.
    raw = make_email(sender="Jane Doe <jane@customer.test>", subject="VPN is down")
    dovecot.deliver(mailbox.incoming_username, [raw])
    assert not in_another_thread(lambda: run_pass(integration=mailbox)).failed
    in_another_thread(send_due)
    record = ServiceRecord.objects.get()
    (received,) = [
        email.message_from_bytes(m.raw, policy=default_policy)
        for m in smtp_server.messages
        if "admin@desk.test" in m.rcpt_tos
    ]
    assert received["Subject"] == f"New ticket from jane@customer.test [#{record.pk}]"
    text = received.get_body(("plain",)).get_content()
    assert "Jane Doe wrote about “VPN is down”.\r\nPriority Normal." in text


def test_an_admin_without_an_address_is_told_on_every_page(
    page: Page, django_user_model, tmp_path: Path
) -> None:
    root = django_user_model.objects.create_superuser(
        username="root", email="", password=ADMIN_PASSWORD
    )
    forget_admin_banner()  # the page of the test before, less than 15 s ago
    page.set_viewport_size(VIEWPORT)
    page.goto("/login/?next=/settings/notifications/")
    _log_in(page, username="root", password=ADMIN_PASSWORD)
    banner = page.locator("#admin-banner")
    expect(banner).to_contain_text("No admin has an email address")
    page.screenshot(path=tmp_path / "notify-banner.png")
    page.get_by_role("link", name="Settings › Email", exact=True).click()
    expect(banner).to_be_visible()
    banner.get_by_role("link", name="Add your email address").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.get_by_label("Email").fill("root@desk.test")
    page.get_by_role("button", name="Save details").click()
    expect(page.locator("#admin-banner")).to_have_count(0)
    root.refresh_from_db()
    assert root.email == "root@desk.test"
