"""Playwright fixtures: Debian's chromium driving pytest-django's live server.

The root conftest registers these (`pytest_plugins`).

The browser lives for one module, not the whole session: Playwright's sync API keeps its
asyncio loop marked as running in the test thread until it stops, so every later test that
calls `asyncio.run()` (aiosmtplib, aiosmtpd) would fail with "cannot be called from a running
event loop". Launching takes about 2 s, once per browser module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.conftest import ADMIN_PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Pages come from a server on loopback: anything slower than this is a hang, not a slow page.
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run make test, which installs chromium")
    # Playwright's sync API runs an event loop in the test thread; the ORM calls these tests
    # make are still synchronous and safe, so Django's guard is lifted while the browser lives.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        driver = sync_playwright().start()
        try:
            yield driver
        finally:
            driver.stop()


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Debian's chromium, never a downloaded one: `playwright install` has no network here.
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def page(browser: Browser, live_server: Any) -> Iterator[Page]:
    """A fresh tab in a fresh context (no cookies), with paths relative to the live server."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _log_in(page: Page, *, username: str, password: str) -> None:
    """Fill and send the login form the page is showing."""
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def admin_page(page: Page, admin_user: Any) -> Page:
    """A page on the integration list, logged in as the admin through the login form."""
    page.goto("/login/?next=/settings/email/")
    _log_in(page, username=admin_user.username, password=ADMIN_PASSWORD)
    expect(page.get_by_role("heading", name="Email integrations")).to_be_visible()
    return page
