"""Passwords and tokens are encrypted in the database and never sent back to a browser."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from integrations.encryption import decrypt_secret
from integrations.models import EmailIntegration, OAuthGrant
from tests.conftest import incoming_imap

pytestmark = pytest.mark.django_db

SECRET_COLUMNS = ("incoming_password", "smtp_password", "oauth_client_secret")
GRANT_SECRET_COLUMNS = ("refresh_token", "access_token")


def raw_row(pk: int, model=EmailIntegration, columns=SECRET_COLUMNS) -> dict[str, str]:
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {table} WHERE id = %s",  # noqa: S608
            [pk],
        )
        return dict(zip(columns, cursor.fetchone(), strict=True))


def test_the_database_row_holds_no_secret_in_clear(make_integration) -> None:
    integration = make_integration(
        incoming_password="imap-pa55word",
        smtp_password="smtp-pa55word",
        **incoming_imap(
            outgoing_enabled=True,
            email_address="support@example.com",
            smtp_host="smtp.example.com",
            smtp_username="support",
        ),
    )
    grant = OAuthGrant.objects.create(
        integration=integration, refresh_token="refresh-t0ken", access_token="access-t0ken"
    )
    row = raw_row(integration.pk) | raw_row(grant.pk, OAuthGrant, GRANT_SECRET_COLUMNS)
    for column, clear in (
        ("incoming_password", "imap-pa55word"),
        ("smtp_password", "smtp-pa55word"),
        ("refresh_token", "refresh-t0ken"),
        ("access_token", "access-t0ken"),
    ):
        assert row[column].startswith("fernet:"), column
        assert clear not in row[column]
        assert decrypt_secret(row[column]) == clear
    stored = EmailIntegration.objects.get(pk=integration.pk)
    assert (stored.incoming_password, stored.smtp_password) == ("imap-pa55word", "smtp-pa55word")
    assert stored.grant.refresh_token == "refresh-t0ken"


def test_the_same_password_encrypts_differently_each_time(make_integration) -> None:
    first = make_integration(incoming_password="same", **incoming_imap(name="A"))
    second = make_integration(
        incoming_password="same", **incoming_imap(name="B", incoming_username="b@example.com")
    )
    assert raw_row(first.pk)["incoming_password"] != raw_row(second.pk)["incoming_password"]


def test_an_empty_secret_stays_empty(make_integration) -> None:
    integration = make_integration(**incoming_imap())
    assert raw_row(integration.pk)["smtp_password"] == ""


def test_keys_rotate_old_key_still_decrypts(make_integration, settings) -> None:
    old_key = Fernet.generate_key()
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    integration = make_integration(incoming_password="rotate-me", **incoming_imap())
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key(), old_key]
    assert EmailIntegration.objects.get(pk=integration.pk).incoming_password == "rotate-me"


def test_a_lost_key_is_a_clear_configuration_error(make_integration, settings) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key()]
    integration = make_integration(incoming_password="lost", **incoming_imap())
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key()]
    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEY"):
        EmailIntegration.objects.get(pk=integration.pk)
