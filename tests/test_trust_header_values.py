"""Names and header values refuse every control character (issue 11, part 8): compat32, which
writes the desk's emails, breaks header lines on \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and
U+2029 besides CR and LF. What people type is refused with a message; what an email brings
is cleaned; what reaches the composer anyway is refused before it reaches the wire."""

from __future__ import annotations

import email
from email.policy import default as default_policy

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from integrations.models import EmailIntegration
from integrations.services import save_integration
from mailworker.delivery import send_due
from mailworker.models import NotificationSettings
from mailworker.outbound.compose import HeaderInjectionError, compose
from mailworker.pipeline.passes import run_pass
from records.models import ServiceRecord
from records.services import create_record, get_or_create_end_user, post_agent_reply

pytestmark = pytest.mark.django_db

# Every character compat32's header writer takes for a line break, and a few other controls.
BREAKERS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\n"]
OTHER_CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\t"]
INJECTING_TITLE = (
    "Printer\x0bBcc: victim@x.test\x0cX-Injected: one\x1cX-A: 1\x1dX-B: 2\x1eX-C: 3"
    "\u2028X-D: 4\u2029X-E: 5\x85X-F: 6\x07end"
)


def header_lines(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    return head.split("\r\n")


def assert_no_injected_header(raw: bytes) -> None:
    for line in header_lines(raw):
        if line[:1] in (" ", "\t"):
            continue  # a folded line continues the header above it
        name = line.split(":", 1)[0].lower()
        assert name not in {"bcc", "x-injected", "x-a", "x-b", "x-c", "x-d", "x-e", "x-f"}, line
    assert b"\x0b" not in raw and b"\x0c" not in raw and b"\x1c" not in raw


def test_a_record_title_full_of_line_breakers_reaches_the_wire_as_one_subject_line(
    quiet, smtp_server, smtp_integration, admin_user
) -> None:
    sender = smtp_integration(encryption="tls")
    jane, _ = get_or_create_end_user(email="jane@customer.test", display_name="Jane Doe")
    # A title as an import or an older version could have stored it.
    record = create_record(title=INJECTING_TITLE, description="Blank pages.", requester=jane)
    smtp_server.clear()

    post_agent_reply(record=record, author=admin_user, body="Restart it.", integration_id=sender.pk)

    assert send_due().sent == 1
    (delivered,) = smtp_server.messages
    assert delivered.rcpt_tos == ["jane@customer.test"]
    assert_no_injected_header(delivered.raw)
    message = email.message_from_bytes(delivered.raw, policy=default_policy)
    assert message["Subject"] == (
        "Re: Printer Bcc: victim@x.test X-Injected: one X-A: 1 X-B: 2 X-C: 3 X-D: 4 X-E: 5 "
        f"X-F: 6 end [#{record.pk}]"
    )
    assert message["Bcc"] is None


def test_an_email_s_display_name_and_subject_are_cleaned_of_control_characters(
    quiet, dovecot, dovecot_integration, smtp_server, smtp_integration, admin_user
) -> None:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    sender = smtp_integration(encryption="tls")
    raw = (
        b"From: =?utf-8?q?Jane=0BX-Injected:_yes=1C?= <jane@customer.test>\r\n"
        b"To: support@desk.test\r\n"
        b"Subject: =?utf-8?q?Printer=0BBcc:_victim@x.test=0CX-Injected:_one=E2=80=A8end=07?=\r\n"
        b"Message-ID: <control-1@customer.test>\r\n\r\nBlank pages.\r\n"
    )
    dovecot.deliver(mailbox.incoming_username, [raw])

    report = run_pass(integration=mailbox)

    assert report.counts["created"] == 1
    record = ServiceRecord.objects.get()
    assert record.title == "Printer Bcc: victim@x.test X-Injected: one end"
    requester = record.requester
    assert requester.email == "jane@customer.test"
    assert (requester.first_name, requester.last_name) == ("Jane", "X-Injected: yes")
    requester.full_clean()  # what an admin saving this user would run: nothing to refuse

    smtp_server.clear()
    post_agent_reply(record=record, author=admin_user, body="On it.", integration_id=sender.pk)
    assert send_due().sent == 1
    (delivered,) = smtp_server.messages
    assert delivered.rcpt_tos == ["jane@customer.test"]
    assert_no_injected_header(delivered.raw)


@pytest.mark.parametrize("char", BREAKERS + OTHER_CONTROLS)
@pytest.mark.parametrize("where", ["subject", "to", "integration name"])
def test_the_composer_refuses_every_control_character_in_a_header(
    smtp_integration, char, where
) -> None:
    integration = smtp_integration(encryption="tls")
    values = {"subject": "Hello", "to": ["jane@customer.test"]}
    if where == "subject":
        values["subject"] = f"Hello{char}Bcc: victim@x.test"
    elif where == "to":
        values["to"] = [f"Jane{char}Bcc: victim@x.test <jane@customer.test>"]
    else:  # as one stored before names were checked would be (PostgreSQL refuses NUL)
        integration.name = f"Desk{char}Bcc: v@x.test"

    with pytest.raises(HeaderInjectionError, match=rf"U\+{ord(char):04X}"):
        compose(integration=integration, text="t", automatic=False, **values)


@pytest.mark.parametrize("char", ["\x0b", "\u2028", "\x07", "\t"])
def test_settings_refuse_an_integration_name_with_a_control_character(char) -> None:
    integration = EmailIntegration(name=f"Support{char}Bcc: victim@x.test")

    with pytest.raises(ValidationError) as refused:
        save_integration(integration=integration)

    assert "control character" in str(refused.value.message_dict["name"])
    assert not EmailIntegration.objects.exists()


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_a_typed_user_name_with_a_control_character_is_refused(field) -> None:
    user = get_user_model()(username="agent", email="agent@desk.test", **{field: "Ann\x0bX"})

    with pytest.raises(ValidationError) as refused:
        user.full_clean()

    assert "control character (U+000B)" in str(refused.value.message_dict[field])


def test_the_user_admin_form_refuses_a_control_character_in_a_name(admin_client) -> None:
    agent = get_user_model().objects.create_user(username="agent", email="agent@desk.test")
    url = f"/admin/records/user/{agent.pk}/change/"
    page = admin_client.get(url)
    form = page.context["adminform"].form
    data = {name: form.initial.get(name) or "" for name in form.fields if name != "password"}
    data.update(
        {
            "first_name": "Ann\u2028Bcc: victim@x.test",
            "date_joined_0": agent.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": agent.date_joined.strftime("%H:%M:%S"),
        }
    )
    data = {key: value for key, value in data.items() if not isinstance(value, list)}

    response = admin_client.post(url, data)

    assert response.status_code == 200  # the form again, with the error
    assert "control character (U+2028)" in response.content.decode()
    agent.refresh_from_db()
    assert agent.first_name == ""


def test_names_read_from_an_email_are_cleaned_not_refused() -> None:
    user, created = get_or_create_end_user(
        email="bob@customer.test", display_name="Bob\x0bSmith\u2028Bcc: x@y.test\x00"
    )

    assert created
    assert (user.first_name, user.last_name) == ("Bob", "Smith Bcc: x@y.test")


@pytest.fixture(autouse=True)
def _notifications_as_configured() -> None:
    NotificationSettings.current()
