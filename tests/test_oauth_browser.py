"""The whole OAuth 2.0 cycle per provider, as an admin lives it in a real browser: press
Connect, approve at the (local) provider, come back connected; then mail is read over IMAP
and POP3 and sent over SMTP with XOAUTH2, the access token expires and is refreshed, the
grant is revoked and the integration asks to be connected again, once."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from integrations.models import EmailIntegration, OAuthGrant
from integrations.services import save_integration
from mailworker.connection_tests import send_test_email
from mailworker.models import OutboxEmail
from records.models import ServiceRecord
from tests.browser import TIMEOUT_MS
from tests.conftest import ADMIN_PASSWORD
from tests.mail import make_email
from tests.oauth_helpers import make_oauth_integration
from tests.oauth_server import OAuthServer

pytestmark = pytest.mark.browser

PROVIDER_NAMES = {"microsoft365": "Microsoft", "google": "Google"}


@pytest.fixture
def oauth_page(browser: Browser, live_server: Any, admin_user: Any) -> Iterator[Page]:
    """A logged-in admin whose browser accepts the local provider's self-signed
    certificate (its consent page is HTTPS, as Microsoft's and Google's are)."""
    context = browser.new_context(base_url=live_server.url, ignore_https_errors=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/login/?next=/settings/email/")
    page.locator("#id_username").fill(admin_user.username)
    page.locator("#id_password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Email integrations")).to_be_visible()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def xoauth2_smtp(smtp_server: Any, oauth_settings: OAuthServer) -> Iterator[Any]:
    smtp_server.start()
    smtp_server.xoauth2_checker = oauth_settings.xoauth2_is_valid
    try:
        yield smtp_server
    finally:
        smtp_server.xoauth2_checker = None


def connect_in_the_browser(page: Page, integration: EmailIntegration, provider: str) -> None:
    page.goto(f"/settings/email/{integration.pk}/")
    page.get_by_role("button", name=f"Connect with {provider}").click()
    # At the provider: the consent page, then back to our callback and the edit page.
    expect(page.get_by_role("heading", name=re.compile("Sign in to the test"))).to_be_visible()
    page.get_by_role("link", name="Accept").click()
    expect(page.get_by_role("heading", name=integration.name)).to_be_visible()


def fetchmail(integration: EmailIntegration) -> None:
    call_command("fetchmail", "--integration", integration.name, stdout=None)


def send_in_a_thread(integration: EmailIntegration) -> Any:
    # Playwright's sync API keeps an event loop running in this thread; aiosmtplib needs
    # its own, as it has in a worker.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(
            send_test_email, integration=integration, to="jane@customer.test"
        ).result()


@pytest.mark.parametrize("protocol", ["microsoft365", "google"])
def test_the_whole_oauth_cycle(
    protocol: str,
    oauth_page: Page,
    oauth_settings: OAuthServer,
    dovecot: Any,
    xoauth2_smtp: Any,
) -> None:
    page, provider = oauth_page, PROVIDER_NAMES[protocol]
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, protocol=protocol, smtp_server=xoauth2_smtp
    )
    mailbox = integration.incoming_username

    # Connect.
    page.goto(f"/settings/email/{integration.pk}/")
    expect(page.locator("#oauth-account")).to_have_text("Not connected yet.")
    connect_in_the_browser(page, integration, provider)
    expect(page.get_by_role("status")).to_contain_text(f"Connected to {provider} as {mailbox}")
    expect(page.locator("#oauth-account")).to_contain_text(f"Connected as {mailbox}")
    integration.refresh_from_db()

    # Read over IMAP, then over POP3, with XOAUTH2.
    dovecot.deliver(mailbox, [make_email(subject="Printer on fire")])
    fetchmail(integration)
    integration.oauth_mailbox_access = "pop3"
    integration.incoming_port = dovecot.port_for("pop3", "ssl")
    save_integration(integration=integration)
    dovecot.deliver(mailbox, [make_email(subject="Coffee machine")])
    fetchmail(integration)
    assert set(
        ServiceRecord.objects.filter(source_integration=integration).values_list("title", flat=True)
    ) == {"Printer on fire", "Coffee machine"}

    # Send over SMTP with XOAUTH2.
    assert send_in_a_thread(integration).ok
    assert xoauth2_smtp.messages[-1].authenticated_as == mailbox

    # The access token expires: refreshed once, mail keeps coming.
    refreshes = oauth_settings.grants["refresh_token"]
    oauth_settings.expire_access_tokens(mailbox)
    OAuthGrant.objects.filter(integration=integration).update(
        access_token_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    dovecot.deliver(mailbox, [make_email(subject="After the hour")])
    fetchmail(integration)
    assert oauth_settings.grants["refresh_token"] == refreshes + 1
    assert ServiceRecord.objects.filter(title="After the hour").exists()

    # The grant is revoked: needs reconnect, admins told once, however many polls.
    oauth_settings.revoke(mailbox)
    OAuthGrant.objects.filter(integration=integration).update(
        access_token_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    for _poll in range(3):
        with pytest.raises(CommandError):
            fetchmail(integration)
    assert OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT).count() == 1
    page.goto("/settings/email/")
    row = page.locator(f'table#integrations tr[data-integration="{integration.name}"]')
    expect(row).to_contain_text("Needs reconnect:")
    page.goto(f"/settings/email/{integration.pk}/")
    expect(page.locator("#needs-reconnect")).to_contain_text("invalid_grant")

    # Connecting again clears it.
    connect_in_the_browser(page, integration, provider)
    expect(page.locator("#needs-reconnect")).to_have_count(0)
    expect(page.locator("#oauth-account")).to_contain_text(f"Connected as {mailbox}")
    dovecot.deliver(mailbox, [make_email(subject="Back again")])
    fetchmail(integration)
    assert ServiceRecord.objects.filter(title="Back again").exists()
