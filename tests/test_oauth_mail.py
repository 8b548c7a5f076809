"""OAuth 2.0 end to end on loopback, without a browser: connect (the test client plays the
browser), read over IMAP and POP3 and send over SMTP with XOAUTH2, refresh, revoke, and
the "needs reconnect" that follows. The browser flow itself is in test_oauth_browser."""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from integrations.models import EmailIntegration, OAuthGrant
from integrations.oauth.errors import ReconnectNeeded
from integrations.oauth.services import connect_app_only
from mailworker.connection_tests import send_test_email, test_incoming_connection
from mailworker.mailboxes.oauth import access_token_for
from mailworker.models import MailboxState, OutboxEmail
from mailworker.scheduling import due_integration_ids
from mailworker.status import state_of
from records.models import ServiceRecord
from tests.conftest import stored_column
from tests.mail import make_email
from tests.oauth_helpers import (
    connect_with_test_client,
    make_oauth_integration,
    new_oauth_mailbox,
)
from tests.oauth_server import JWT_BEARER, OAuthServer

pytestmark = pytest.mark.django_db

PROVIDERS = ["microsoft365", "google"]


@pytest.fixture
def admin_client(client: Any, admin_user: Any) -> Any:
    client.force_login(admin_user)
    return client


@pytest.fixture
def xoauth2_smtp(smtp_server: Any, oauth_settings: OAuthServer) -> Iterator[Any]:
    """The shared aiosmtpd, accepting XOAUTH2 tokens the OAuth server says are valid."""
    smtp_server.start()
    smtp_server.xoauth2_checker = oauth_settings.xoauth2_is_valid
    try:
        yield smtp_server
    finally:
        smtp_server.xoauth2_checker = None


@pytest.fixture
def connected(admin_client: Any, oauth_settings: OAuthServer, dovecot: Any):
    """Make an integration and connect it as its own mailbox, as an admin would."""

    def make(**options: Any) -> EmailIntegration:
        integration = make_oauth_integration(
            oauth_server=oauth_settings, dovecot=dovecot, **options
        )
        page = connect_with_test_client(admin_client, integration, oauth_settings)
        assert page.status_code == 200
        integration.refresh_from_db()
        assert integration.grant.account == integration.incoming_username
        return integration

    return make


def fetchmail(integration: EmailIntegration) -> str:
    out = io.StringIO()
    call_command("fetchmail", "--integration", integration.name, stdout=out)
    return out.getvalue()


def let_the_access_token_expire(integration: EmailIntegration, server: OAuthServer) -> None:
    """Its hour is up: the provider no longer accepts it, and our cache says it is stale."""
    server.expire_access_tokens(integration.incoming_username)
    OAuthGrant.objects.filter(integration=integration).update(
        access_token_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )


# Connecting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_connecting_stores_encrypted_tokens_and_names_the_account(
    protocol: str, connected, admin_client: Any
) -> None:
    integration = connected(protocol=protocol)

    assert integration.grant.refresh_token.startswith("rt-")
    assert integration.grant.access_token_expires_at > timezone.now()
    assert stored_column(integration.grant, "refresh_token").startswith("fernet:")
    assert stored_column(integration.grant, "access_token").startswith("fernet:")
    page = admin_client.get(reverse("integrations:edit", args=[integration.pk]))
    text = page.content.decode()
    assert f"as <strong>{integration.incoming_username}</strong>" in text
    assert integration.grant.refresh_token not in text
    assert integration.grant.access_token not in text


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_a_token_of_another_account_is_refused_and_nothing_is_stored(
    protocol: str, admin_client: Any, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, protocol=protocol
    )
    oauth_settings.sign_in_as("someone.else@desk.test")

    page = connect_with_test_client(admin_client, integration, oauth_settings)

    text = page.content.decode()
    assert "You signed in as someone.else@desk.test" in text
    assert f"reads and sends as {integration.incoming_username}" in text
    integration.refresh_from_db()
    assert integration.grant.refresh_token == ""
    assert integration.grant.access_token == ""
    assert integration.grant.account == ""


def test_cancelling_at_the_provider_stores_nothing(
    admin_client: Any, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = make_oauth_integration(oauth_server=oauth_settings, dovecot=dovecot)

    page = connect_with_test_client(admin_client, integration, oauth_settings, link="deny")

    assert "access_denied" in page.content.decode()
    integration.refresh_from_db()
    assert not integration.oauth_connected


# Reading and sending with the token -------------------------------------------------------


@pytest.mark.parametrize("protocol", PROVIDERS)
@pytest.mark.parametrize("access", ["imap", "pop3"])
def test_a_connected_mailbox_is_read_with_xoauth2(
    protocol: str, access: str, connected, dovecot: Any
) -> None:
    integration = connected(protocol=protocol, access=access)
    dovecot.deliver(
        integration.incoming_username, [make_email(), make_email(subject="Two", body="2")]
    )

    assert "fetched 2, created 2" in fetchmail(integration)

    assert ServiceRecord.objects.filter(source_integration=integration).count() == 2
    assert dovecot.count(integration.incoming_username) == 0


def test_the_test_connection_button_logs_in_with_the_token(connected, dovecot: Any) -> None:
    integration = connected(access="imap")
    dovecot.deliver(integration.incoming_username, [make_email()])

    outcome = test_incoming_connection(integration=integration)

    assert outcome.ok, outcome.message
    assert "1 email waiting" in outcome.message


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_sending_authenticates_with_xoauth2(
    protocol: str, admin_client: Any, oauth_settings: OAuthServer, dovecot: Any, xoauth2_smtp
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, protocol=protocol, smtp_server=xoauth2_smtp
    )
    connect_with_test_client(admin_client, integration, oauth_settings)
    integration.refresh_from_db()

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert outcome.ok, outcome.message
    received = xoauth2_smtp.messages[-1]
    assert received.authenticated_as == integration.incoming_username
    assert received.rcpt_tos == ["jane@customer.test"]


def test_smtp_refuses_a_token_of_another_user(
    admin_client: Any, oauth_settings: OAuthServer, dovecot: Any, xoauth2_smtp
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, smtp_server=xoauth2_smtp
    )
    connect_with_test_client(admin_client, integration, oauth_settings)
    # The token is the mailbox's; sending as another user must fail, and say so.
    EmailIntegration.objects.filter(pk=integration.pk).update(smtp_username="boss@desk.test")
    integration.refresh_from_db()

    outcome = send_test_email(integration=integration, to="jane@customer.test")

    assert not outcome.ok
    assert "refused the OAuth 2.0 token for boss@desk.test" in outcome.message


# Refreshing -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_an_expired_access_token_is_refreshed_once_and_reused(
    protocol: str, connected, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = connected(protocol=protocol)
    first_token = integration.grant.access_token
    refreshes = oauth_settings.grants["refresh_token"]
    let_the_access_token_expire(integration, oauth_settings)
    dovecot.deliver(integration.incoming_username, [make_email()])

    assert "created 1" in fetchmail(integration)
    dovecot.deliver(integration.incoming_username, [make_email(subject="Later")])
    assert "created 1" in fetchmail(integration)

    assert oauth_settings.grants["refresh_token"] == refreshes + 1
    integration.refresh_from_db()
    assert integration.grant.access_token not in ("", first_token)
    assert integration.grant.access_token_expires_at > timezone.now()
    assert not integration.needs_reconnect


def test_a_token_revoked_before_its_expiry_is_refreshed_at_login(
    connected, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = connected()
    # The provider invalidated the access token early; our cache still holds it for valid.
    oauth_settings.expire_access_tokens(integration.incoming_username)
    dovecot.deliver(integration.incoming_username, [make_email()])

    assert "created 1" in fetchmail(integration)


def test_a_worker_that_waited_for_the_lock_takes_the_token_another_one_refreshed(
    connected, oauth_settings: OAuthServer
) -> None:
    integration = connected()
    stale = EmailIntegration.objects.get(pk=integration.pk)
    stale.grant.access_token_expires_at = timezone.now() - datetime.timedelta(minutes=1)
    # Meanwhile another worker refreshed: the row holds a fresh token.
    refreshes = oauth_settings.grants["refresh_token"]

    token = access_token_for(stale)

    assert token == integration.grant.access_token
    assert oauth_settings.grants["refresh_token"] == refreshes
    assert stale.grant.access_token_expires_at == integration.grant.access_token_expires_at


# When the provider refuses: needs reconnect --------------------------------------------------


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_a_revoked_grant_needs_reconnect_stops_polling_and_alerts_admins_once(
    protocol: str, connected, admin_client: Any, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = connected(protocol=protocol)
    dovecot.deliver(integration.incoming_username, [make_email()])
    oauth_settings.revoke(integration.incoming_username)
    let_the_access_token_expire(integration, oauth_settings)
    refreshes = oauth_settings.grants["refresh_token"]

    for _poll in range(4):
        with pytest.raises(CommandError):
            fetchmail(integration)

    integration.refresh_from_db()
    assert integration.needs_reconnect
    assert "invalid_grant" in integration.grant.needs_reconnect_reason
    assert "Connect with" in integration.grant.needs_reconnect_reason
    assert integration.grant.access_token == ""
    # One refresh attempt, not one per poll: no loop against the provider.
    assert oauth_settings.grants["refresh_token"] == refreshes + 1
    alerts = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT)
    assert alerts.count() == 1
    assert "must be connected to" in alerts.get().subject
    long_ago = timezone.now() - datetime.timedelta(days=1)
    MailboxState.objects.filter(integration=integration).update(last_polled_at=long_ago)
    assert integration.pk not in due_integration_ids()
    listing = admin_client.get(reverse("integrations:list")).content.decode()
    assert "Needs reconnect:" in listing
    edit = admin_client.get(reverse("integrations:edit", args=[integration.pk])).content.decode()
    assert 'id="needs-reconnect"' in edit

    # The admin connects again: the mark goes, the mail waiting meanwhile comes in.
    connect_with_test_client(admin_client, integration, oauth_settings)
    integration.refresh_from_db()
    assert not integration.needs_reconnect
    assert integration.grant.needs_reconnect_notified_at is None
    assert integration.pk in due_integration_ids()
    assert "created 1" in fetchmail(integration)


def test_an_expired_client_secret_needs_reconnect_with_a_message_that_says_so(
    connected, oauth_settings: OAuthServer
) -> None:
    integration = connected()
    oauth_settings.clients[integration.oauth_client_id].secret = "rotated at the provider"
    let_the_access_token_expire(integration, oauth_settings)

    with pytest.raises(CommandError):
        fetchmail(integration)

    integration.refresh_from_db()
    assert integration.needs_reconnect
    assert "invalid_client" in integration.grant.needs_reconnect_reason
    assert "client secret" in integration.grant.needs_reconnect_reason


def test_a_token_endpoint_that_is_down_is_an_ordinary_failure(
    connected, oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = connected()
    let_the_access_token_expire(integration, oauth_settings)
    dovecot.deliver(integration.incoming_username, [make_email()])
    oauth_settings.take_down()

    with pytest.raises(CommandError):
        fetchmail(integration)

    integration.refresh_from_db()
    assert not integration.needs_reconnect
    assert "503" in state_of(integration).last_error
    # Still polled: a later pass, once the interval is up, tries again.
    long_ago = timezone.now() - datetime.timedelta(days=1)
    MailboxState.objects.filter(integration=integration).update(last_polled_at=long_ago)
    assert integration.pk in due_integration_ids()
    assert not OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT).exists()

    oauth_settings.bring_up()
    assert "created 1" in fetchmail(integration)


def test_sending_with_a_grant_that_needs_reconnect_fails_without_asking_the_provider(
    admin_client: Any, oauth_settings: OAuthServer, dovecot: Any, xoauth2_smtp
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, smtp_server=xoauth2_smtp
    )
    connect_with_test_client(admin_client, integration, oauth_settings)
    oauth_settings.revoke(integration.incoming_username)
    let_the_access_token_expire(integration, oauth_settings)
    integration.refresh_from_db()

    first = send_test_email(integration=integration, to="jane@customer.test")
    refreshes = oauth_settings.grants["refresh_token"]
    second = send_test_email(integration=integration, to="jane@customer.test")

    assert not first.ok and not second.ok
    assert "Needs reconnect" in second.message
    assert oauth_settings.grants["refresh_token"] == refreshes


# App-only access ----------------------------------------------------------------------------


def _certificate_and_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "servicedesk test app")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def test_microsoft_app_only_access_reads_the_shared_mailbox_and_sends(
    admin_client: Any, oauth_settings: OAuthServer, dovecot: Any, xoauth2_smtp
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, app_only=True, smtp_server=xoauth2_smtp
    )

    response = admin_client.post(
        reverse("integrations:oauth_connect", args=[integration.pk]), follow=True
    )

    assert "Connected to Microsoft with app-only access" in response.content.decode()
    integration.refresh_from_db()
    assert integration.grant.refresh_token == ""
    assert oauth_settings.grants["client_credentials"] >= 1
    dovecot.deliver(integration.incoming_username, [make_email()])
    assert "created 1" in fetchmail(integration)
    assert send_test_email(integration=integration, to="jane@customer.test").ok
    # An expired app-only token is simply asked for again.
    before = oauth_settings.grants["client_credentials"]
    let_the_access_token_expire(integration, oauth_settings)
    dovecot.deliver(integration.incoming_username, [make_email(subject="Again")])
    assert "created 1" in fetchmail(integration)
    assert oauth_settings.grants["client_credentials"] == before + 1


def test_microsoft_app_only_access_with_a_certificate(
    oauth_settings: OAuthServer, dovecot: Any
) -> None:
    certificate_pem, key_pem = _certificate_and_key()
    integration = make_oauth_integration(
        oauth_server=oauth_settings, dovecot=dovecot, app_only=True
    )
    oauth_settings.clients[integration.oauth_client_id].certificate_pem = certificate_pem
    EmailIntegration.objects.filter(pk=integration.pk).update(
        oauth_client_secret="", oauth_client_certificate=key_pem + certificate_pem
    )
    integration.refresh_from_db()

    grant = connect_app_only(integration=integration)

    assert grant.account == integration.incoming_username
    dovecot.deliver(integration.incoming_username, [make_email()])
    assert "created 1" in fetchmail(integration)


def _service_account_key(oauth_server: OAuthServer, *delegated: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    account = oauth_server.register_service_account(public_pem, *delegated)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "client_email": account.client_email,
            "private_key_id": "k1",
            "private_key": private_pem,
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def test_google_service_account_acts_as_the_mailbox(
    oauth_settings: OAuthServer, dovecot: Any
) -> None:
    mailbox = new_oauth_mailbox()
    integration = make_oauth_integration(
        oauth_server=oauth_settings,
        dovecot=dovecot,
        protocol="google",
        app_only=True,
        mailbox=mailbox,
        oauth_service_account_key=_service_account_key(oauth_settings, mailbox),
    )
    before = oauth_settings.grants[JWT_BEARER]

    grant = connect_app_only(integration=integration)

    assert grant.account == mailbox
    assert oauth_settings.grants[JWT_BEARER] == before + 1
    assert oauth_settings.account_of(grant.access_token) == mailbox
    dovecot.deliver(mailbox, [make_email()])
    assert "created 1" in fetchmail(integration)


def test_google_service_account_without_delegation_for_the_mailbox_is_refused(
    oauth_settings: OAuthServer, dovecot: Any
) -> None:
    integration = make_oauth_integration(
        oauth_server=oauth_settings,
        dovecot=dovecot,
        protocol="google",
        app_only=True,
        oauth_service_account_key=_service_account_key(oauth_settings, "other@desk.test"),
    )

    with pytest.raises(ReconnectNeeded, match="unauthorized_client"):
        connect_app_only(integration=integration)
