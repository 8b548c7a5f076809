"""An agent's day in a real browser: a reply with an attachment and a Cc that aiosmtpd
receives, a record opened by hand for a phone call, and two records merged, after which an
email to the old number (through the real Dovecot and a worker pass) lands in the kept one.

Sending and the worker pass run in a thread of their own: Playwright's sync API keeps an
event loop marked as running in the test thread, and the SMTP sender runs one of its own.
"""

from __future__ import annotations

import email
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.policy import default as default_policy
from typing import TypeVar

import pytest
from django.db import connections
from playwright.sync_api import Page, expect

from mailworker.delivery import send_due
from records.models import Direction, ServiceRecord
from records.services import add_message, create_record, get_or_create_end_user
from tests.desk import Desk
from tests.mail import make_email

pytestmark = pytest.mark.browser
T = TypeVar("T")


def in_worker_thread(work: Callable[[], T]) -> T:
    """Run `work` as a worker would, outside the test thread's event loop."""

    def run() -> T:
        try:
            return work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result(timeout=120)


def record_of(email_address: str, title: str) -> ServiceRecord:
    requester, _ = get_or_create_end_user(email=email_address, display_name="Jane Doe")
    record = create_record(title=title, description="", requester=requester)
    add_message(
        record=record,
        direction=Direction.INCOMING,
        from_address=email_address,
        subject=title,
        text_body=f"{title}. Please help.",
        to_addresses=["support@desk.test"],
    )
    return record


def test_agent_replies_with_an_attachment_and_a_cc(
    admin_page: Page, smtp_server, smtp_integration, quiet
) -> None:
    smtp_integration(encryption="tls", is_default=True)
    smtp_server.clear()
    record = record_of("jane@customer.test", "Printer on fire")
    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/records/{record.pk}/")

    page.get_by_label("Reply", exact=True).fill("The manual is attached.")
    page.get_by_label("Cc", exact=True).fill("boss@customer.test")
    page.get_by_label("Attachments").set_input_files(
        files=[{"name": "manual.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 x"}]
    )
    page.get_by_role("button", name="Send reply").click()

    expect(page.get_by_role("status")).to_contain_text(f"Reply to #{record.pk} queued")
    outgoing = page.locator("#message-log .message.out")
    expect(outgoing.locator(".cc")).to_have_text("boss@customer.test")
    expect(outgoing.get_by_role("link", name="manual.pdf")).to_be_visible()

    assert in_worker_thread(send_due).sent == 1
    (received,) = smtp_server.messages
    assert sorted(received.rcpt_tos) == ["boss@customer.test", "jane@customer.test"]
    parsed = email.message_from_bytes(received.raw, policy=default_policy)
    assert parsed["Cc"] == "boss@customer.test"
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "manual.pdf"
    assert attachment.get_content() == b"%PDF-1.4 x"


def test_agent_opens_a_record_by_hand_for_a_phone_call(admin_page: Page, quiet) -> None:
    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("link", name="Records", exact=True).click()
    page.get_by_role("link", name="New record").click()
    expect(page.get_by_role("heading", name="New service record")).to_be_visible()

    page.get_by_label("Requester's email").fill("bob@customer.test")
    page.get_by_label("Title").fill("Phone: laptop will not boot")
    page.get_by_label("Description").fill("Bob called at 9:10: a black screen since the update.")
    page.get_by_label("Priority").select_option(label="High")
    page.get_by_label("Assigned admin").select_option(label="admin")
    page.get_by_role("button", name="Open record").click()

    record = ServiceRecord.objects.get()
    expect(page.get_by_role("status")).to_contain_text(f"Opened #{record.pk}.")
    expect(
        page.get_by_role("heading", name=f"#{record.pk} Phone: laptop will not boot")
    ).to_be_visible()
    expect(page.locator("#record-details .priority")).to_have_text("High")
    expect(page.locator("#record-details .assigned-admin")).to_have_text("admin")
    assert record.requester.email == "bob@customer.test" and not record.requester.is_staff

    # My records shows it; selected with the header's box, it changes status in bulk.
    page.get_by_role("link", name="Records", exact=True).click()
    page.get_by_role("link", name="My records").click()
    expect(page.locator("#records tbody tr")).to_have_count(1)
    page.get_by_label("Select all records of this page").check()
    expect(page.get_by_label(f"Select #{record.pk}")).to_be_checked()
    page.get_by_label("Set status").select_option(label="In Progress")
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.get_by_role("status")).to_contain_text(f"Changed 1 of 1 records: #{record.pk}.")
    expect(page.locator(f'tr[data-record="{record.pk}"]')).to_contain_text("In Progress")
    expect(page.get_by_role("link", name="My records")).to_have_attribute("aria-current", "page")


def test_agent_merges_two_records_and_the_old_number_threads_into_the_kept_one(
    admin_page: Page, dovecot, dovecot_integration, smtp_server, smtp_integration, quiet
) -> None:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    desk = Desk(dovecot, smtp_server, mailbox)
    in_worker_thread(
        lambda: desk.receive(
            make_email(sender="Jane <jane@customer.test>", subject="Printer on fire"),
        )
    )
    in_worker_thread(
        lambda: desk.receive(
            make_email(sender="Bob <bob@customer.test>", subject="Printer smoking too"),
        )
    )
    kept = ServiceRecord.objects.get(requester__email="jane@customer.test")
    old = ServiceRecord.objects.get(requester__email="bob@customer.test")

    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/records/{old.pk}/")
    page.get_by_label("Merge this record into #").fill(str(kept.pk))
    # The page asks first: a merge cannot be undone.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Merge into that record").click()

    expect(page.get_by_role("status")).to_contain_text(f"Merged #{old.pk} into #{kept.pk}")
    expect(page.get_by_role("heading", name=f"#{kept.pk} Printer on fire")).to_be_visible()
    log = page.locator("#message-log")
    expect(log).to_contain_text("Printer smoking too")

    in_worker_thread(
        lambda: desk.receive(
            make_email(
                sender="Bob <bob@customer.test>",
                subject=f"Re: Printer smoking too [#{old.pk}]",
                body="It stopped smoking by itself.",
            )
        )
    )
    page.goto(f"/records/{old.pk}/")
    expect(page.get_by_role("status")).to_contain_text(f"#{old.pk} was merged into #{kept.pk}")
    expect(log.locator(".message.in").last).to_contain_text("It stopped smoking by itself.")
    assert ServiceRecord.objects.count() == 2
