"""Settings > Email in a real browser: what an admin sees and does on the screens."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

from integrations.models import EmailIntegration
from tests.conftest import ADMIN_PASSWORD, incoming_imap, outgoing_smtp, stored_column

pytestmark = pytest.mark.browser

LIST = "/settings/email/"
NEW = "/settings/email/new/"
SCREENSHOT = "/tmp/settings-email-form.png"


def row(page: Page, name: str) -> Locator:
    return page.locator(f'table#integrations tr[data-integration="{name}"]')


def apply(page: Page) -> None:
    page.get_by_role("button", name="Apply").click()


def send_login_form(page: Page, *, password: str) -> None:
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_an_anonymous_visitor_logs_in_and_lands_on_the_list(page: Page, admin_user) -> None:
    page.goto(LIST)
    expect(page).to_have_url(re.compile(r"/login/\?next=/settings/email/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    send_login_form(page, password=ADMIN_PASSWORD)

    expect(page).to_have_url(re.compile(r"/settings/email/$"))
    expect(page.get_by_role("heading", name="Email integrations")).to_be_visible()
    expect(page.locator(".topbar .who")).to_have_text("admin")


def test_a_wrong_password_keeps_the_visitor_on_the_login_form(page: Page, admin_user) -> None:
    page.goto(LIST)
    send_login_form(page, password="not the password")

    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    expect(page.get_by_role("heading", name="Email integrations")).to_have_count(0)


def test_admin_creates_an_incoming_integration_through_the_form(admin_page: Page) -> None:
    page = admin_page
    page.get_by_role("link", name="Create new").click()
    expect(page.get_by_role("heading", name="New email integration")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Support desk")

    incoming = page.get_by_role("checkbox", name="Incoming Emails", exact=True)
    server = page.locator("#field-incoming_server")
    expect(server).to_be_hidden()
    incoming.check()
    expect(server).to_be_visible()
    incoming.uncheck()
    expect(server).to_be_hidden()
    incoming.check()
    expect(server).to_be_visible()

    page.locator("#id_incoming_server").fill("imap.example.com")
    page.locator("#id_incoming_username").fill("support@example.com")
    page.locator("#id_incoming_password").fill("typed-imap-secret")
    page.screenshot(path=SCREENSHOT, full_page=True)
    apply(page)

    expect(page.get_by_role("status")).to_have_text("Integration “Support desk” created.")
    page.get_by_role("link", name="Email integrations").first.click()
    listed = row(page, "Support desk")
    expect(listed.locator("td").nth(1)).to_have_text("Incoming")
    expect(listed.locator("td").nth(2)).to_have_text("IMAP")
    expect(listed.locator("td").nth(3)).to_have_text("support@example.com")
    # It only reads, so it is not the default: the default sends the desk's system emails.
    expect(listed.locator("td.default-mark")).to_be_empty()
    expect(page.locator("#system-sender")).to_contain_text("No integration sends email")

    saved = EmailIntegration.objects.get(name="Support desk")
    assert saved.incoming_password == "typed-imap-secret"
    at_rest = stored_column(saved, "incoming_password")
    assert at_rest.startswith("fernet:")
    assert "typed-imap-secret" not in at_rest


def test_the_outgoing_section_opens_and_closes_with_its_toggle(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_label("Name", exact=True).fill("Outbound")

    outgoing = page.get_by_role("checkbox", name="Outgoing Emails", exact=True)
    host = page.locator("#field-smtp_host")
    expect(host).to_be_hidden()
    outgoing.check()
    expect(host).to_be_visible()
    outgoing.uncheck()
    expect(host).to_be_hidden()
    outgoing.check()
    expect(page.locator("#field-incoming_server")).to_be_hidden()

    page.locator("#id_email_address").fill("desk@example.com")
    page.locator("#id_smtp_host").fill("smtp.example.com")
    apply(page)

    expect(page.get_by_role("status")).to_have_text(
        re.compile(r"^Integration “Outbound” created\. It is the default integration")
    )
    page.goto(LIST)
    listed = row(page, "Outbound")
    expect(listed.locator("td").nth(1)).to_have_text("Outgoing")
    expect(listed.locator("td").nth(2)).to_have_text("SMTP")
    expect(listed.locator("td").nth(3)).to_have_text("desk@example.com")


def test_a_microsoft_host_with_imap_is_refused_next_to_the_protocol(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_label("Name", exact=True).fill("Office")
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("#id_incoming_server").fill("outlook.office365.com")
    page.locator("#id_incoming_username").fill("desk@contoso.com")
    page.locator("#id_incoming_password").fill("typed-office-secret")
    apply(page)

    error = page.locator("#field-incoming_protocol p.field-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("OAuth 2.0")
    expect(error).to_contain_text("outlook.office365.com")
    # What was typed stays, except the password, which is never sent back.
    expect(page.locator("#id_incoming_server")).to_have_value("outlook.office365.com")
    expect(page.locator("#id_incoming_password")).to_have_value("")
    assert "typed-office-secret" not in page.content()
    assert not EmailIntegration.objects.exists()


def test_a_broken_subject_regex_is_shown_in_the_opened_advanced_part(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_label("Name", exact=True).fill("Support")
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("#id_incoming_server").fill("imap.example.com")
    page.locator("#id_incoming_username").fill("support@example.com")
    page.locator("#id_incoming_password").fill("typed-imap-secret")
    page.locator("details#advanced summary").click()
    page.locator("#id_ignore_subject_regex").fill("([a-z")
    apply(page)

    expect(page.locator("details#advanced")).to_have_attribute("open", "")
    error = page.locator("#field-ignore_subject_regex p.field-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("does not compile")
    expect(page.locator("#id_ignore_subject_regex")).to_have_value("([a-z")
    assert not EmailIntegration.objects.exists()


def test_making_another_integration_the_default_moves_the_mark(
    admin_page: Page, make_integration: Callable[..., EmailIntegration]
) -> None:
    make_integration(**outgoing_smtp(name="First", email_address="first@example.com"))
    make_integration(**outgoing_smtp(name="Second", email_address="second@example.com"))
    page = admin_page
    page.reload()
    expect(row(page, "First").locator("td.default-mark")).to_have_text("Default")
    expect(row(page, "Second").locator("td.default-mark")).to_be_empty()

    row(page, "Second").get_by_role("link", name="Second").click()
    page.get_by_label("Use as default email integration").check()
    apply(page)
    expect(page.get_by_role("status")).to_have_text("Integration “Second” saved.")

    page.goto(LIST)
    expect(row(page, "First").locator("td.default-mark")).to_be_empty()
    expect(row(page, "Second").locator("td.default-mark")).to_have_text("Default")
    expect(page.locator("td.default-mark .badge")).to_have_count(1)


def test_the_password_is_never_sent_back_to_the_browser(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_label("Name", exact=True).fill("Support")
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("#id_incoming_server").fill("imap.example.com")
    page.locator("#id_incoming_username").fill("support@example.com")
    page.locator("#id_incoming_password").fill("typed-imap-secret")
    apply(page)
    expect(page.get_by_role("status")).to_have_text("Integration “Support” created.")

    page.reload()
    password = page.locator("#id_incoming_password")
    expect(password).to_have_value("")
    expect(password).to_have_attribute("placeholder", re.compile("stored; leave empty to keep"))
    assert "typed-imap-secret" not in page.content()


def test_delete_asks_for_confirmation_first(
    admin_page: Page, make_integration: Callable[..., EmailIntegration]
) -> None:
    make_integration(**incoming_imap(name="Keep", incoming_username="keep@example.com"))
    doomed = make_integration(**incoming_imap(name="Old", incoming_username="old@example.com"))
    page = admin_page
    page.goto(f"/settings/email/{doomed.pk}/")

    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete “Old”?")).to_be_visible()
    assert EmailIntegration.objects.filter(pk=doomed.pk).exists()
    page.get_by_role("button", name="Delete").click()

    expect(page).to_have_url(re.compile(r"/settings/email/$"))
    expect(page.get_by_role("status")).to_have_text("Integration “Old” deleted.")
    expect(row(page, "Old")).to_have_count(0)
    expect(row(page, "Keep")).to_be_visible()
    assert not EmailIntegration.objects.filter(pk=doomed.pk).exists()


def test_status_exceptions_are_a_group_named_by_their_label(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("details#advanced summary").click()
    group = page.get_by_role("group", name="Unless the record's status is")
    expect(group).to_be_visible()
    expect(group.get_by_role("checkbox")).to_have_count(5)
    expect(group.get_by_label("Closed")).to_be_visible()


def test_a_failed_apply_is_summed_up_at_the_top_with_links_to_the_fields(
    admin_page: Page, tmp_path
) -> None:
    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(NEW)
    page.get_by_label("Name", exact=True).fill("Support")
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("#id_incoming_username").fill("support@example.com")
    page.locator("#id_incoming_password").fill("typed-imap-secret")
    page.get_by_role("checkbox", name="Outgoing Emails", exact=True).check()
    page.locator("#id_smtp_host").fill("smtp.example.com")
    apply(page)

    summary = page.locator("#error-summary")
    expect(summary).to_be_in_viewport()
    expect(summary.get_by_role("heading")).to_have_text("Not applied: 2 problems to fix")
    page.screenshot(path=tmp_path / "emailfix-error-summary.png")
    # Far below; the link brings it on screen.
    address = page.locator("#field-email_address")
    expect(address).not_to_be_in_viewport()
    summary.get_by_role("link", name="Outgoing Emails › Email address").click()
    expect(page).to_have_url(re.compile(r"#field-email_address$"))
    expect(address).to_be_in_viewport()
    expect(address.locator(".field-error")).to_have_text("Enter the address emails are sent from.")
    summary.get_by_role("link", name="Incoming Emails › Server").click()
    expect(page.locator("#field-incoming_server")).to_be_in_viewport()
    # What was typed stays (the password excepted: never sent back).
    expect(page.locator("#id_smtp_host")).to_have_value("smtp.example.com")
    expect(page.locator("#id_incoming_username")).to_have_value("support@example.com")
    assert not EmailIntegration.objects.exists()


def test_pop3_shows_no_folder_and_no_push_delivery(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    protocol = page.locator("#id_incoming_protocol")
    folder, push = page.locator("#field-incoming_folder"), page.locator("#field-use_idle")
    expect(folder).to_be_visible()
    expect(push).to_be_visible()

    protocol.select_option("pop3")
    expect(folder).to_be_hidden()
    expect(push).to_be_hidden()
    expect(page.locator("#field-poll_interval_seconds")).to_be_visible()

    # OAuth 2.0 reading over POP3 is POP3 too.
    protocol.select_option("google")
    expect(folder).to_be_visible()
    page.locator("#id_oauth_mailbox_access").select_option("pop3")
    expect(folder).to_be_hidden()
    expect(push).to_be_hidden()

    protocol.select_option("imap")
    expect(folder).to_be_visible()
    expect(push).to_be_visible()
