"""The OAuth 2.0 parts of Settings > Email: secrets never reach the browser, and the connect
flow's callback accepts only the sign-in this admin started in this session."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from integrations.models import EmailIntegration, OAuthGrant
from integrations.services import Secrets, save_integration
from tests.oauth_helpers import consent_link, make_oauth_integration
from tests.oauth_server import OAuthServer

pytestmark = pytest.mark.django_db

CALLBACK = "/settings/email/oauth/callback/"
SECRETS = {
    "oauth_client_secret": "client-Secret-never-shown",
    "oauth_refresh_token": "refresh-Token-never-shown",
    "oauth_access_token": "access-Token-never-shown",
}


@pytest.fixture
def admin_client(client: Client, admin_user: Any) -> Client:
    client.force_login(admin_user)
    return client


@pytest.fixture
def integration(oauth_settings: OAuthServer, dovecot: Any) -> EmailIntegration:
    return make_oauth_integration(oauth_server=oauth_settings, dovecot=dovecot)


def start_connect(client: Client, integration: EmailIntegration) -> str:
    response = client.post(reverse("integrations:oauth_connect", args=[integration.pk]))
    assert response.status_code == 302
    return response["Location"]


def test_no_secret_or_token_is_ever_rendered(admin_client: Client, db: Any) -> None:
    certificate = "-----BEGIN PRIVATE KEY-----\nCertificate-key-never-shown\n"
    service_key = '{"private_key": "Service-key-never-shown"}'
    integration = EmailIntegration(
        name="Google mailbox",
        incoming_enabled=True,
        incoming_protocol="google",
        oauth_client_id="id.apps.googleusercontent.test",
        incoming_username="desk@example.test",
    )
    save_integration(
        integration=integration,
        secrets=Secrets(oauth_client_secret=SECRETS["oauth_client_secret"]),
    )
    OAuthGrant.objects.create(
        integration=integration,
        account="desk@example.test",
        refresh_token=SECRETS["oauth_refresh_token"],
        access_token=SECRETS["oauth_access_token"],
    )
    # Stored past validation, as a dump restored from elsewhere could hold them.
    EmailIntegration.objects.filter(pk=integration.pk).update(
        oauth_client_certificate=certificate, oauth_service_account_key=service_key
    )
    edit = reverse("integrations:edit", args=[integration.pk])

    pages = [
        admin_client.get(edit),
        admin_client.get(reverse("integrations:list")),
        # A refused form is rendered again with what was typed, except secrets.
        admin_client.post(
            edit,
            {
                "name": "",
                "incoming_enabled": "on",
                "incoming_protocol": "google",
                "oauth_client_secret": "typed-Secret-never-shown",
                "oauth_service_account_key": "typed-Key-never-shown",
            },
        ),
    ]

    secrets = [*SECRETS.values(), "Certificate-key-never-shown", "Service-key-never-shown"]
    secrets += ["typed-Secret-never-shown", "typed-Key-never-shown"]
    for page in pages:
        text = page.content.decode()
        for secret in secrets:
            assert secret not in text
    assert "Connected as <strong>desk@example.test</strong>" in pages[0].content.decode()


def test_the_callback_sends_an_anonymous_visitor_to_log_in(client: Client, db: Any) -> None:
    response = client.get(CALLBACK, {"code": "c", "state": "s"})

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_callback_needs_the_change_permission(client: Client, make_staff: Any) -> None:
    client.force_login(make_staff("viewer", "view_emailintegration"))

    assert client.get(CALLBACK, {"code": "c", "state": "s"}).status_code == 403


def test_connect_is_a_post_with_a_csrf_token(
    admin_user: Any, integration: EmailIntegration
) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    url = reverse("integrations:oauth_connect", args=[integration.pk])

    assert browser.get(url).status_code == 405
    assert browser.post(url).status_code == 403


def test_a_callback_with_an_unknown_state_is_refused(
    admin_client: Client, integration: EmailIntegration, oauth_settings: OAuthServer
) -> None:
    auth_uri = start_connect(admin_client, integration)
    callback = consent_link(oauth_settings, auth_uri)
    forged = callback.split("state=")[0] + "state=forged"

    response = admin_client.get(forged)

    assert response.status_code == 400
    assert "not started from this browser session" in response.content.decode()
    integration.refresh_from_db()
    assert not integration.oauth_connected


def test_a_callback_in_another_admins_session_is_refused(
    admin_client: Client,
    integration: EmailIntegration,
    oauth_settings: OAuthServer,
    django_user_model: Any,
) -> None:
    callback = consent_link(oauth_settings, start_connect(admin_client, integration))
    other = Client()
    other.force_login(
        django_user_model.objects.create_superuser("mallory", "mallory@desk.test", "pw")
    )

    assert other.get(callback).status_code == 400
    integration.refresh_from_db()
    assert not integration.oauth_connected
    # The admin who started it still can finish it.
    assert admin_client.get(callback).status_code == 302
    integration.refresh_from_db()
    assert integration.oauth_connected


def test_a_state_is_good_for_one_callback_only(
    admin_client: Client, integration: EmailIntegration, oauth_settings: OAuthServer
) -> None:
    callback = consent_link(oauth_settings, start_connect(admin_client, integration))

    assert admin_client.get(callback).status_code == 302
    assert admin_client.get(callback).status_code == 400


def test_a_callback_for_an_integration_whose_app_changed_is_refused(
    admin_client: Client, integration: EmailIntegration, oauth_settings: OAuthServer
) -> None:
    callback = consent_link(oauth_settings, start_connect(admin_client, integration))
    EmailIntegration.objects.filter(pk=integration.pk).update(oauth_client_id="another-app")

    page = admin_client.get(callback, follow=True)

    assert "changed during the sign-in" in page.content.decode()
    integration.refresh_from_db()
    assert not integration.oauth_connected


def test_changing_the_app_or_mailbox_forgets_the_tokens(db: Any) -> None:
    integration = save_integration(
        integration=EmailIntegration(
            name="Office",
            incoming_enabled=True,
            incoming_protocol="microsoft365",
            oauth_tenant="contoso.onmicrosoft.test",
            oauth_client_id="app-1",
            incoming_username="desk@contoso.test",
        )
    )
    OAuthGrant.objects.create(
        integration=integration, refresh_token="rt", access_token="at", account="desk@contoso.test"
    )
    integration.poll_interval_seconds = 120
    save_integration(integration=integration)
    integration.refresh_from_db()
    assert integration.grant.refresh_token == "rt"

    integration.incoming_username = "other@contoso.test"
    save_integration(integration=integration)

    integration.refresh_from_db()
    assert (integration.grant.refresh_token, integration.grant.account) == ("", "")
