"""Settings > Email in a real browser for Microsoft 365 (Graph): the fields an admin sees."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

NEW = "/settings/email/new/"
SCREENSHOT = "/tmp/settings-email-graph.png"


def test_choosing_graph_shows_its_fields_and_hides_the_server_ones(admin_page: Page) -> None:
    page = admin_page
    page.goto(NEW)
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    server = page.locator("#field-incoming_server")
    password = page.locator("#field-incoming_password")
    tenant = page.locator("#field-oauth_tenant")
    processed = page.locator("#field-graph_processed_folder")
    expect(server).to_be_visible()
    expect(password).to_be_visible()
    expect(tenant).to_be_hidden()
    expect(processed).to_be_hidden()

    page.locator("#id_incoming_protocol").select_option(label="Microsoft 365 (Graph)")

    for hidden in ("incoming_server", "incoming_port", "incoming_encryption", "incoming_password"):
        expect(page.locator(f"#field-{hidden}")).to_be_hidden()
    expect(page.locator("#field-oauth_mailbox_access")).to_be_hidden()
    for shown in (
        "oauth_access",
        "oauth_tenant",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_client_certificate",
        "incoming_username",
        "incoming_folder",
        "graph_processed_folder",
    ):
        expect(page.locator(f"#field-{shown}")).to_be_visible()
    expect(page.locator("#field-oauth_service_account_key")).to_be_hidden()
    setup = page.locator("#graph-setup")
    expect(setup).to_be_visible()
    setup.locator("summary").click()
    expect(setup).to_contain_text("New-ApplicationAccessPolicy")

    # Sending: Graph hides SMTP's server and login.
    page.get_by_role("checkbox", name="Outgoing Emails", exact=True).check()
    expect(page.locator("#field-smtp_host")).to_be_visible()
    page.locator("#id_outgoing_protocol").select_option(label="Microsoft 365 (Graph)")
    for hidden in ("smtp_host", "smtp_port", "smtp_encryption", "smtp_username", "smtp_password"):
        expect(page.locator(f"#field-{hidden}")).to_be_hidden()
    expect(page.locator("#field-email_address")).to_be_visible()
    page.screenshot(path=SCREENSHOT, full_page=True)

    # Sending only through Graph: the app's fields stay, the incoming ones go.
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).uncheck()
    expect(page.locator("#field-incoming_username")).to_be_hidden()
    expect(tenant).to_be_visible()
    expect(page.locator("#field-oauth_client_id")).to_be_visible()

    # Back to IMAP and SMTP: the server fields return, the app's go.
    page.locator("#id_outgoing_protocol").select_option(label="SMTP")
    expect(tenant).to_be_hidden()
    page.get_by_role("checkbox", name="Incoming Emails", exact=True).check()
    page.locator("#id_incoming_protocol").select_option(label="IMAP")
    expect(server).to_be_visible()
    expect(password).to_be_visible()
    expect(page.locator("#field-oauth_client_id")).to_be_hidden()
