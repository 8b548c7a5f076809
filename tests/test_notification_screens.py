"""Settings > Notifications through HTTP: who may see and change what, editing an email's
text with its preview, refusing a text that does not compile, resetting to the default,
and the edited text being what the end user's mailbox really gets."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from mailworker.models import NotificationSettings, NotificationTemplate, OutboxEmail
from mailworker.notifications import notify
from mailworker.outbound.texts import render_email
from records.models import ServiceRecord
from records.services import create_record, get_or_create_end_user
from tests.desk import Desk
from tests.mail import make_email

pytestmark = pytest.mark.django_db

LIST = "/settings/notifications/"
ACK = "/settings/notifications/record_created_end_user/"
RESET = "/settings/notifications/record_created_end_user/reset/"


@pytest.fixture
def staff_with(django_user_model: Any):
    """A staff user holding exactly the named mailworker permissions."""

    def make(*codenames: str, username: str = "clerk") -> Any:
        user = django_user_model.objects.create_user(
            username=username, email=f"{username}@desk.test", is_staff=True
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="mailworker", codename__in=codenames)
        )
        return user

    return make


@pytest.fixture
def admin_client(client: Client, admin_user: Any) -> Client:
    client.force_login(admin_user)
    return client


def text_form(**overrides: str) -> dict[str, str]:
    return {
        "subject": "Ticket opened: {{ record.title }}",
        "body": "Dear {{ record.requester.name }},\nticket {{ record.number }} is ours now.\n",
        "action": "save",
    } | overrides


# Permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [LIST, ACK])
def test_anonymous_visitors_are_sent_to_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("url", [LIST, ACK])
def test_staff_without_the_permissions_are_refused(client: Client, staff_with, url) -> None:
    client.force_login(staff_with())
    assert client.get(url).status_code == 403


def test_a_viewer_sees_the_settings_and_texts_but_cannot_change_them(
    client: Client, staff_with
) -> None:
    client.force_login(staff_with("view_notificationsettings", "view_notificationtemplate"))
    page = client.get(LIST)
    assert page.status_code == 200
    assert b"Email texts" in page.content and b'type="submit" class="primary"' not in page.content
    assert client.get(ACK).status_code == 200
    assert client.post(LIST, {"admin_recipients": "all"}).status_code == 403
    assert client.post(ACK, text_form()).status_code == 403
    assert client.post(RESET).status_code == 403
    assert not NotificationTemplate.objects.exists()


def test_changing_texts_needs_its_own_permission(client: Client, staff_with) -> None:
    client.force_login(
        staff_with(
            "view_notificationsettings",
            "change_notificationsettings",
            "view_notificationtemplate",
        )
    )
    assert client.post(ACK, text_form()).status_code == 403
    assert client.get(LIST).status_code == 200


def test_posts_need_the_csrf_token(admin_user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(ACK, text_form()).status_code == 403
    assert client.post(LIST, {"admin_recipients": "all"}).status_code == 403


def test_the_nav_links_the_screen_for_those_who_may_see_it(admin_client: Client) -> None:
    assert b'href="/settings/notifications/"' in admin_client.get(LIST).content


# Who gets what ----------------------------------------------------------------------------


def test_the_events_and_their_recipients_are_saved(admin_client: Client) -> None:
    response = admin_client.post(
        LIST,
        {
            "end_user_on_created": "on",
            "end_user_on_updated": "on",
            "admins_on_escalated": "on",
            "admin_recipients": "group",
        },
    )
    assert response.status_code == 302
    choices = NotificationSettings.current()
    assert (choices.end_user_on_created, choices.end_user_on_updated) == (True, True)
    assert not choices.end_user_on_details_changed and not choices.admins_on_created
    assert choices.admins_on_escalated and choices.admin_recipients == "group"
    assert b"Notification settings saved." in admin_client.get(LIST).content


def test_an_unknown_choice_of_admins_is_refused_with_a_message(admin_client: Client) -> None:
    response = admin_client.post(LIST, {"admin_recipients": "everyone"})
    assert response.status_code == 400
    assert b"Select a valid choice" in response.content
    assert NotificationSettings.current().admin_recipients == "assigned"


# Texts ------------------------------------------------------------------------------------


def test_the_edit_page_shows_the_default_text_its_variables_and_a_preview(
    admin_client: Client,
) -> None:
    page = admin_client.get(ACK).content.decode()
    assert "We received your request: {{ record.title }}" in page
    assert "record.requester.name" in page and "record.priority" in page
    # The preview renders the default text with the sample record.
    assert 'id="preview-subject">We received your request: Printer on floor 3 jams [#123]' in page
    assert "Hello Jane Doe," in page
    assert 'id="reset"' not in page  # nothing to reset yet


def test_preview_renders_the_edited_text_and_saves_nothing(admin_client: Client) -> None:
    response = admin_client.post(ACK, text_form(action="preview"))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Ticket opened: Printer on floor 3 jams [#123]" in page
    assert "Dear Jane Doe,\nticket 123 is ours now." in page
    assert not NotificationTemplate.objects.exists()


def test_a_saved_text_is_what_the_desk_renders_and_reset_brings_the_default_back(
    admin_client: Client, admin_user
) -> None:
    response = admin_client.post(ACK, text_form())
    assert response.status_code == 302 and response["Location"] == ACK
    row = NotificationTemplate.objects.get(key="record_created_end_user")
    assert row.updated_by == admin_user
    page = admin_client.get(ACK).content.decode()
    assert "saved: it is sent from now on" in page and 'id="reset"' in page
    assert '<span class="badge edited">Edited</span>' in admin_client.get(LIST).content.decode()

    values = {"record": {"title": "VPN", "number": 7, "requester": {"name": "Ann"}}}
    assert render_email("record_created_end_user", values).subject == "Ticket opened: VPN"

    assert admin_client.post(RESET).status_code == 302
    assert not NotificationTemplate.objects.exists()
    assert render_email("record_created_end_user", values).subject == (
        "We received your request: VPN"
    )
    assert "has the default text again" in admin_client.get(ACK).content.decode()


@pytest.mark.parametrize(
    "body, line, says",
    [
        ("Hello\n{% if record.title %}\nno end", 2, "Unclosed tag on line 2: 'if'"),
        ("Hi\n\n{{ record.title|nosuchfilter }}", 3, "Invalid filter: 'nosuchfilter'"),
        ("{% debug %}", 1, "Invalid block tag on line 1: 'debug'"),
        ("one\n{% load static %}", 2, "Invalid block tag on line 2: 'load'"),
        ('{% include "emails/base.html" %}', 1, "Invalid block tag on line 1: 'include'"),
        (
            "{{ record.title.__class__ }}",
            1,
            "Variables and attributes may not begin with underscores: 'record.title.__class__'",
        ),
    ],
)
def test_a_text_that_does_not_compile_is_refused_with_its_line(
    admin_client: Client, body: str, line: int, says: str
) -> None:
    response = admin_client.post(ACK, text_form(body=body))
    page = response.content.decode()
    assert response.status_code == 400
    assert f"Line {line}: {says}" in page.replace("&#x27;", "'")
    assert "register or load" not in page
    assert not NotificationTemplate.objects.exists()


def test_a_broken_subject_is_refused_too(admin_client: Client) -> None:
    response = admin_client.post(ACK, text_form(subject="{{ record.title|default: }}"))
    assert response.status_code == 400
    assert "Subject: Line 1:" in response.content.decode()


def test_an_unknown_email_is_not_found(admin_client: Client) -> None:
    assert admin_client.get("/settings/notifications/no_such_email/").status_code == 404
    assert admin_client.post("/settings/notifications/no_such_email/reset/").status_code == 404


def test_a_text_reaches_nothing_but_its_plain_values(admin_client: Client) -> None:
    """The record is a dict of strings: no model, manager, settings or secret behind it."""
    requester, _ = get_or_create_end_user(email="jane@customer.test")
    record = create_record(title="Printer", description="It jams.", requester=requester)
    probe = (
        "{{ record.requester.password }}|{{ record.requester.objects }}|{{ settings.SECRET_KEY }}"
        "|{{ record.status.records }}|{{ record.delete }}|{{ request }}|{{ user }}"
    )
    assert admin_client.post(ACK, text_form(body=probe)).status_code == 302
    notify(record=record, to=["jane@customer.test"], template="record_created_end_user", context={})
    (row,) = OutboxEmail.objects.filter(recipient="jane@customer.test")
    assert row.text_body == "||||||"
    assert ServiceRecord.objects.filter(pk=record.pk).exists()


# The real thing: an email arrives, the edited acknowledgement goes out -------------------


@pytest.fixture
def desk(dovecot, dovecot_integration, smtp_server, smtp_integration) -> Desk:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    smtp_server.clear()
    return Desk(dovecot, smtp_server, mailbox)


def test_the_end_user_receives_the_edited_acknowledgement(admin_client: Client, desk) -> None:
    admin_client.post(
        ACK,
        text_form(
            subject="Got it: {{ record.title }}",
            body=(
                "Hi {{ record.requester.name }},\n\n"
                "your ticket {{ record.number }} ({{ record.priority }}) is in good hands.\n"
            ),
        ),
    )
    desk.receive(make_email(sender="Jane Doe <jane@customer.test>", subject="VPN is down"))
    record = ServiceRecord.objects.get()
    (acknowledgement,) = desk.inbox_of("jane@customer.test")
    assert acknowledgement["Subject"] == f"Got it: VPN is down [#{record.pk}]"
    text = acknowledgement.get_body(("plain",)).get_content()
    assert f"your ticket {record.pk} (Normal) is in good hands." in text
    assert text.startswith("Hi Jane Doe,\r\n")


def test_a_text_s_lines_are_kept_with_the_line_ends_of_the_shipped_texts(
    admin_client: Client,
) -> None:
    admin_client.post(ACK, text_form(body="Hello,\r\n\r\nticket {{ record.number }}.\r\n"))
    row = NotificationTemplate.objects.get()
    assert row.body == "Hello,\n\nticket {{ record.number }}.\n"
