"""Making OAuth 2.0 integrations against the tests' Dovecot, aiosmtpd and OAuth server, and
connecting them without a browser (the Django test client plays the browser)."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any
from urllib.parse import urlparse

import requests
from django.test import Client
from django.urls import reverse

from integrations.models import EmailIntegration
from integrations.services import Secrets, save_integration
from tests.dovecot import Dovecot
from tests.oauth_server import OAuthServer
from tests.smtpd import SmtpServer

PROVIDER_OF = {"microsoft365": "microsoft", "google": "google"}


def new_oauth_mailbox() -> str:
    """An address Dovecot serves only through XOAUTH2: no password exists for it."""
    return f"o{secrets.token_hex(5)}@desk.test"


def make_oauth_integration(
    *,
    oauth_server: OAuthServer,
    dovecot: Dovecot,
    protocol: str = "microsoft365",
    access: str = "imap",
    app_only: bool = False,
    smtp_server: SmtpServer | None = None,
    mailbox: str | None = None,
    **overrides: Any,
) -> EmailIntegration:
    mailbox = mailbox or new_oauth_mailbox()
    client = oauth_server.register_client(
        PROVIDER_OF[protocol], app_mailbox=mailbox if app_only else ""
    )
    fields: dict[str, Any] = {
        "name": f"OAuth {protocol} {access} {secrets.token_hex(3)}",
        "incoming_enabled": True,
        "incoming_protocol": protocol,
        "oauth_mailbox_access": access,
        "oauth_access": "app" if app_only else "delegated",
        "oauth_tenant": client.tenant if protocol == "microsoft365" else "",
        "oauth_client_id": client.client_id,
        "incoming_server": dovecot.host,
        "incoming_port": dovecot.port_for(access, "ssl"),
        "incoming_encryption": "ssl",
        "incoming_username": mailbox,
        "ca_certificate": dovecot.ca_pem,
        "verify_certificates": True,
    }
    if smtp_server is not None:
        fields |= {
            "outgoing_enabled": True,
            "email_address": mailbox,
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port_for("tls"),
            "smtp_encryption": "tls",
            # One integration, two servers with their own self-signed CAs: trust both.
            "ca_certificate": dovecot.ca_pem + smtp_server.ca_pem,
        }
    fields |= overrides
    return save_integration(
        integration=EmailIntegration(**fields),
        secrets=Secrets(oauth_client_secret=client.secret),
    )


def consent_link(oauth_server: OAuthServer, auth_uri: str, *, link: str = "accept") -> str:
    """What the browser would do on the provider's consent page: follow its Accept (or
    Cancel) link. Returns the callback path and query on our side."""
    page = requests.get(auth_uri, verify=str(oauth_server.ca_path), timeout=10)
    assert page.status_code == 200, page.text
    match = re.search(rf'id="{link}" href="([^"]+)"', page.text)
    assert match, page.text
    target = urlparse(html.unescape(match.group(1)))
    return f"{target.path}?{target.query}"


def connect_with_test_client(
    client: Client, integration: EmailIntegration, oauth_server: OAuthServer, *, link="accept"
) -> Any:
    """Press Connect, approve at the provider, come back: the page the admin ends on."""
    response = client.post(reverse("integrations:oauth_connect", args=[integration.pk]))
    assert response.status_code == 302, response.content
    callback = consent_link(oauth_server, response["Location"], link=link)
    return client.get(callback, follow=True)
