"""Settings > Email through HTTP: who may see what, CSRF, and what the pages send back."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from integrations.models import EmailIntegration
from mailworker.models import MailboxState
from tests.conftest import incoming_imap

pytestmark = pytest.mark.django_db

LIST = "/settings/email/"
NEW = "/settings/email/new/"


# What makes an integration send (the default must): as model fields and as form data.
SENDS = {
    "outgoing_enabled": True,
    "email_address": "support@example.com",
    "smtp_host": "smtp.example.com",
    "smtp_encryption": "tls",
}
SENDS_FORM = {**SENDS, "outgoing_enabled": "on"}


def form_data(**overrides) -> dict[str, str]:
    data = {
        "name": "Support",
        "description": "",
        "incoming_enabled": "on",
        "incoming_protocol": "imap",
        "oauth_mailbox_access": "imap",
        "incoming_server": "mail.example.com",
        "incoming_port": "",
        "incoming_encryption": "ssl",
        "incoming_username": "support@example.com",
        "incoming_password": "s3cret-imap",
        "incoming_folder": "INBOX",
        "poll_interval_seconds": "60",
        "remove_emojis": "on",
        "outgoing_protocol": "smtp",
        "smtp_encryption": "tls",
        "outgoing_encoding": "quoted-printable",
        "outgoing_content_type": "html",
        "outgoing_charset": "utf-8",
        "verify_certificates": "on",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


@pytest.mark.parametrize("url", [LIST, NEW, "/settings/email/1/", "/settings/email/1/delete/"])
def test_anonymous_visitors_are_sent_to_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("url", [LIST, NEW])
def test_end_users_are_refused(client: Client, end_user, url: str) -> None:
    client.force_login(end_user)
    assert client.get(url).status_code == 403


def test_staff_without_permissions_are_refused(client: Client, make_staff) -> None:
    client.force_login(make_staff("agent"))
    assert client.get(LIST).status_code == 403


def test_view_permission_shows_the_list_but_not_the_forms(
    client: Client, make_staff, make_integration
) -> None:
    integration = make_integration()
    client.force_login(make_staff("viewer", "view_emailintegration"))
    response = client.get(LIST)
    assert response.status_code == 200
    assert "Support" in response.text
    assert "Create new" not in response.text
    assert client.get(NEW).status_code == 403
    assert client.get(f"/settings/email/{integration.pk}/").status_code == 403
    assert client.post(f"/settings/email/{integration.pk}/delete/").status_code == 403
    assert EmailIntegration.objects.filter(pk=integration.pk).exists()


def test_permissions_without_staff_status_are_refused(client: Client, django_user_model) -> None:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="notstaff", email="n@x.test")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="integrations"))
    client.force_login(user)
    assert client.get(LIST).status_code == 403


def test_posting_without_csrf_token_is_refused(admin_user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(NEW, form_data())
    assert response.status_code == 403
    assert not EmailIntegration.objects.exists()


def test_admin_creates_an_integration_and_sees_it_listed(client: Client, admin_user) -> None:
    client.force_login(admin_user)
    response = client.post(NEW, form_data(**SENDS_FORM))
    integration = EmailIntegration.objects.get(name="Support")
    assert response.status_code == 302
    assert response["Location"] == f"/settings/email/{integration.pk}/"
    assert integration.incoming_password == "s3cret-imap"
    assert integration.is_default
    listing = client.get(LIST).text
    assert "Support" in listing and "support@example.com" in listing and "Default" in listing


def test_the_password_is_never_sent_back(client: Client, admin_user) -> None:
    client.force_login(admin_user)
    client.post(NEW, form_data())
    integration = EmailIntegration.objects.get()
    page = client.get(f"/settings/email/{integration.pk}/").text
    assert "s3cret-imap" not in page
    assert "stored; leave empty to keep" in page


def test_an_empty_password_on_edit_keeps_the_stored_one(client: Client, admin_user) -> None:
    client.force_login(admin_user)
    client.post(NEW, form_data())
    integration = EmailIntegration.objects.get()
    response = client.post(
        f"/settings/email/{integration.pk}/", form_data(incoming_password="", description="changed")
    )
    assert response.status_code == 302
    integration.refresh_from_db()
    assert (integration.description, integration.incoming_password) == ("changed", "s3cret-imap")
    client.post(f"/settings/email/{integration.pk}/", form_data(incoming_password="new-one"))
    integration.refresh_from_db()
    assert integration.incoming_password == "new-one"


def test_a_bad_value_is_shown_next_to_its_field_and_nothing_is_saved(
    client: Client, admin_user
) -> None:
    client.force_login(admin_user)
    response = client.post(NEW, form_data(incoming_server="outlook.office365.com"))
    assert response.status_code == 400
    assert "Microsoft 365 (OAuth 2.0)" in response.context["form"].errors["incoming_protocol"][0]
    assert not EmailIntegration.objects.exists()


def test_the_edition_limit_is_shown_on_the_form(
    client: Client, admin_user, settings, make_integration
) -> None:
    settings.EDITION = "basic"
    make_integration(**incoming_imap(name="One", incoming_username="1@example.com"))
    make_integration(**incoming_imap(name="Two", incoming_username="2@example.com"))
    client.force_login(admin_user)
    response = client.post(NEW, form_data(name="Three", incoming_username="3@example.com"))
    assert response.status_code == 400
    assert (
        "basic edition allows 2 incoming" in response.context["form"].errors["incoming_enabled"][0]
    )


def test_setting_a_second_default_moves_the_mark(
    client: Client, admin_user, make_integration
) -> None:
    first = make_integration(**incoming_imap(name="First", **SENDS))
    client.force_login(admin_user)
    client.post(
        NEW,
        form_data(
            name="Second", incoming_username="second@example.com", is_default="on", **SENDS_FORM
        ),
    )
    first.refresh_from_db()
    assert first.is_default is False
    assert EmailIntegration.objects.get(name="Second").is_default is True


def test_delete_asks_first_then_deletes(client: Client, admin_user, make_integration) -> None:
    integration = make_integration()
    client.force_login(admin_user)
    confirm = client.get(f"/settings/email/{integration.pk}/delete/")
    assert confirm.status_code == 200
    assert "Delete “Support”?" in confirm.text
    assert EmailIntegration.objects.filter(pk=integration.pk).exists()
    response = client.post(f"/settings/email/{integration.pk}/delete/")
    assert response.status_code == 302
    assert not EmailIntegration.objects.filter(pk=integration.pk).exists()


def test_the_list_shows_direction_protocol_and_last_error(
    client: Client, admin_user, make_integration
) -> None:
    integration = make_integration(
        **incoming_imap(
            outgoing_enabled=True, email_address="help@example.com", smtp_host="smtp.example.com"
        )
    )
    MailboxState.objects.create(integration=integration, last_error="Login failed: bad password")
    client.force_login(admin_user)
    row = client.get(LIST).text
    assert "Both" in row and "IMAP · SMTP" in row and "help@example.com" in row
    assert "Login failed: bad password" in row


def test_agents_land_on_their_records(client: Client, django_user_model) -> None:
    from django.contrib.auth.models import Permission

    agent = django_user_model.objects.create_user(
        username="agent2", email="a2@desk.test", is_staff=True
    )
    agent.user_permissions.set(Permission.objects.filter(codename="view_servicerecord"))
    client.force_login(agent)
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/records/"
