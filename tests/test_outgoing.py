"""Outgoing email end to end: compose, outbox, a real SMTP server (aiosmtpd), and replies that
come back through a real mailbox (Dovecot) to the same record."""

from __future__ import annotations

import email
import time
from datetime import timedelta
from email.policy import default as default_policy

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.delivery import composed_bytes, send_due
from mailworker.models import NotificationSettings, OutboxEmail
from mailworker.outbound.compose import HeaderInjectionError, compose, record_subject
from mailworker.outbound.queue import queue_email
from mailworker.pipeline.passes import run_pass
from mailworker.status import state_of
from records.models import Message, ServiceRecord, Status
from records.services import (
    change_record_details,
    create_record,
    escalate_overdue_records,
    get_or_create_end_user,
    post_agent_reply,
)
from tests.mail import make_email

pytestmark = pytest.mark.django_db
State = OutboxEmail.State


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=default_policy)


def a_record(title: str = "Printer broken", requester: str = "jane@customer.test", **fields):
    user, _ = get_or_create_end_user(email=requester, display_name="Jane Doe")
    due_at = fields.pop("due_at", None)
    record = create_record(
        title=title, description="It prints blank pages.", requester=user, **fields
    )
    if due_at is not None:
        ServiceRecord.objects.filter(pk=record.pk).update(due_at=due_at)
        record.refresh_from_db()
    return record


class TestCompose:
    def test_subject_carries_the_record_number_once(self) -> None:
        assert record_subject(subject="Printer broken", number=124) == "Printer broken [#124]"
        assert record_subject(subject="Re: Printer broken [#124]", number=124) == (
            "Re: Printer broken [#124]"
        )

    def test_an_automatic_email_says_so_and_threads(self, smtp_integration) -> None:
        integration = smtp_integration(encryption="tls")
        composed = compose(
            integration=integration,
            to=["jane@customer.test"],
            subject="Hello [#5]",
            text="Grüße",
            html="<p>Grüße</p>",
            in_reply_to="<a@x>",
            references=["<first@x>", "<a@x>"],
            automatic=True,
        )
        message = parsed(composed.raw)
        assert message["From"].addresses[0].display_name == integration.name
        assert message["From"].addresses[0].addr_spec == integration.email_address
        assert message["Message-ID"] == composed.message_id
        assert (message["In-Reply-To"], message["References"]) == ("<a@x>", "<first@x> <a@x>")
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["X-Auto-Response-Suppress"] == "All"
        assert message["X-Servicedesk-Loop"]
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)).get_content().strip() == "Grüße"
        assert b"\r\n" in composed.raw

    def test_plain_text_integrations_send_plain_text(self, smtp_integration) -> None:
        integration = smtp_integration(encryption="tls", outgoing_content_type="plain")
        composed = compose(
            integration=integration,
            to=["a@b.test"],
            subject="s",
            text="t",
            html="<p>t</p>",
            automatic=False,
        )
        message = parsed(composed.raw)
        assert message.get_content_type() == "text/plain"
        assert message["Auto-Submitted"] is None

    @pytest.mark.parametrize("field", ["subject", "to"])
    def test_line_breaks_in_headers_are_refused(self, smtp_integration, field) -> None:
        integration = smtp_integration(encryption="tls")
        values = {"subject": "Hi", "to": ["a@b.test"]}
        values[field] = (
            "Hi\r\nBcc: victim@x.test" if field == "subject" else ["a@b.test\r\nBcc: v@x"]
        )
        with pytest.raises(HeaderInjectionError):
            compose(integration=integration, text="t", automatic=False, **values)


def test_an_agent_reply_arrives_numbered_and_the_answer_threads_back(
    quiet, smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user
) -> None:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    sender = smtp_integration(encryption="tls")
    record = a_record(source_integration=mailbox)
    smtp_server.clear()
    reply = post_agent_reply(
        record=record, author=admin_user, body="Please restart it.", integration_id=sender.pk
    )
    assert send_due().sent == 1
    (delivered,) = smtp_server.messages
    message = parsed(delivered.raw)
    assert f"[#{record.pk}]" in message["Subject"]
    assert delivered.rcpt_tos == ["jane@customer.test"]
    reply.refresh_from_db()
    assert reply.message_id == message["Message-ID"]
    assert reply.subject == message["Subject"]  # the log shows what was sent
    assert reply.outbox.get().state == State.SENT

    # The end user answers with the number removed from the subject: In-Reply-To still finds it.
    answer = make_email(
        subject="Re: your answer",
        body="Restarted, works.",
        headers={"In-Reply-To": message["Message-ID"]},
    )
    dovecot.deliver(mailbox.incoming_username, [answer])
    report = run_pass(integration=mailbox)
    assert report.counts["appended"] == 1
    assert ServiceRecord.objects.count() == 1
    assert [m.direction for m in record.messages.order_by("id")] == ["out", "in"]


def test_the_record_s_own_integration_sends_else_the_default(quiet, smtp_server, smtp_integration):
    default = smtp_integration(encryption="tls")
    other = smtp_integration(encryption="ssl")
    assert EmailIntegration.objects.get(pk=default.pk).is_default
    own = a_record(source_integration=other)
    plain = a_record(title="Other", requester="b@customer.test")
    queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        to=["jane@customer.test"],
        subject="a",
        text="a",
        record=own,
    )
    queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        to=["b@customer.test"],
        subject="b",
        text="b",
        record=plain,
    )
    rows = {row.record_id: row.integration_id for row in OutboxEmail.objects.all()}
    assert rows == {own.pk: other.pk, plain.pk: default.pk}


def test_addresses_the_desk_reads_are_removed_from_every_email(
    quiet, smtp_integration, dovecot_integration
) -> None:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    queued = queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        automatic=False,
        subject="s",
        text="t",
        to=["jane@customer.test", mailbox.incoming_username.upper()],
    )
    assert queued.removed == [mailbox.incoming_username.upper()]
    assert queued.rows[0].to_addresses == ["jane@customer.test"]


def test_new_records_notify_the_end_user_and_the_admins(
    smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user
) -> None:
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(mailbox.incoming_username, [make_email()])
    run_pass(integration=mailbox)
    record = ServiceRecord.objects.get()
    smtp_server.clear()
    assert send_due().sent == 2
    by_recipient = {m.rcpt_tos[0]: parsed(m.raw) for m in smtp_server.messages}
    assert set(by_recipient) == {"jane@customer.test", admin_user.email}
    assert f"[#{record.pk}]" in by_recipient["jane@customer.test"]["Subject"]
    assert by_recipient["jane@customer.test"]["Auto-Submitted"] == "auto-generated"
    # Sent notifications join the record's message log.
    assert record.messages.filter(direction="out").count() == 2


def test_an_auto_reply_triggers_no_notification(
    smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user
) -> None:
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    record = a_record(source_integration=mailbox)
    OutboxEmail.objects.all().delete()
    dovecot.deliver(
        mailbox.incoming_username,
        [
            make_email(
                subject=f"Automatic reply: [#{record.pk}]",
                headers={"Auto-Submitted": "auto-replied"},
            )
        ],
    )
    run_pass(integration=mailbox)
    assert record.messages.count() == 1
    assert not OutboxEmail.objects.exists()


def test_details_changes_notify_with_old_and_new_values(
    smtp_server, smtp_integration, admin_user
) -> None:
    smtp_integration(encryption="tls")
    record = a_record()
    OutboxEmail.objects.all().delete()
    change_record_details(record=record, actor=None, status=Status.objects.get(name="In Progress"))
    to_user = OutboxEmail.objects.get(recipient="jane@customer.test")
    assert "Status: New -> In Progress" in to_user.text_body


def test_an_overdue_record_is_escalated_once(smtp_integration, admin_user) -> None:
    smtp_integration(encryption="tls")
    record = a_record(due_at=timezone.now() - timedelta(hours=1))
    OutboxEmail.objects.all().delete()
    assert escalate_overdue_records() == 1
    assert escalate_overdue_records() == 0
    (alert,) = OutboxEmail.objects.all()
    assert alert.to_addresses == [admin_user.email]
    assert "passed its due date" in alert.text_body
    record.refresh_from_db()
    assert record.escalated_at is not None


def test_smtp_down_during_a_burst_of_100_then_up_delivers_each_once(
    quiet, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="tls")
    records = [a_record(title=f"R{n}", requester=f"user{n}@customer.test") for n in range(100)]
    smtp_server.stop()
    try:
        for record in records:
            queue_email(
                kind=OutboxEmail.Kind.NOTIFICATION,
                to=[record.requester.email],
                subject=f"About {record.title}",
                text="t",
                record=record,
            )
        report = send_due()
        assert (report.sent, report.retrying) == (0, 100)
        assert OutboxEmail.objects.filter(state=State.PENDING, attempts=1).count() == 100
    finally:
        smtp_server.start()
    smtp_server.clear()
    OutboxEmail.objects.update(next_attempt_at=timezone.now())  # the back-off has passed
    assert send_due().sent == 100
    assert send_due().sent == 0
    recipients = sorted(m.rcpt_tos[0] for m in smtp_server.messages)
    assert recipients == sorted(f"user{n}@customer.test" for n in range(100))
    assert OutboxEmail.objects.filter(state=State.SENT).count() == 100


def test_a_loop_with_an_auto_responder_stops_at_the_cap(
    smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user, settings
) -> None:
    """An auto-responder that answers without any auto-reply header (the worst kind) and
    keeps our number in the subject: each of its answers updates the record and notifies,
    until the per-recipient cap holds the notifications back."""
    settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR = 5
    NotificationSettings.objects.update_or_create(pk=1, defaults={"end_user_on_updated": True})
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    dovecot.deliver(mailbox.incoming_username, [make_email(sender="robot@loop.test", body="0")])
    run_pass(integration=mailbox)
    record = ServiceRecord.objects.get()
    for round_number in range(1, 12):
        send_due()
        to_robot = [m for m in smtp_server.messages if m.rcpt_tos == ["robot@loop.test"]]
        if not to_robot:
            break
        smtp_server.clear()
        answers = [
            make_email(
                sender="robot@loop.test",
                subject=parsed(m.raw)["Subject"],
                body=f"I got your email {round_number}-{n}",
            )
            for n, m in enumerate(to_robot)
        ]
        dovecot.deliver(mailbox.incoming_username, answers)
        run_pass(integration=mailbox)
    sent_to_robot = OutboxEmail.objects.filter(recipient="robot@loop.test", state=State.SENT)
    assert sent_to_robot.count() == 5
    assert OutboxEmail.objects.filter(recipient="robot@loop.test", state=State.SUPPRESSED).exists()
    assert record.messages.filter(direction="in").count() == 6


def test_a_permanent_refusal_is_failed_with_the_server_s_answer(
    quiet, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="tls")
    queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        to=["nobody@refused.test"],
        subject="s",
        text="t",
        automatic=False,
    )
    report = send_due()
    assert report.failed == 1
    row = OutboxEmail.objects.get()
    assert row.state == State.FAILED
    assert "550" in row.last_error


def test_1000_notifications_through_the_outbox(quiet, smtp_server, smtp_integration, capsys):
    smtp_integration(encryption="tls")
    record = a_record()
    for n in range(1000):
        queue_email(
            kind=OutboxEmail.Kind.NOTIFICATION,
            to=[f"user{n}@customer.test"],
            subject=f"Notification {n}",
            text="t",
            record=record,
        )
    smtp_server.clear()
    started = time.monotonic()
    report = send_due()
    elapsed = time.monotonic() - started
    assert report.sent == 1000
    assert len(smtp_server.messages) == 1000
    assert Message.objects.filter(record=record, direction="out").count() == 1000
    with capsys.disabled():
        print(f"\n1,000 notifications from the outbox to aiosmtpd: {elapsed:.2f} s")


def test_a_failing_integration_alerts_admins_once_and_recovers_by_itself(
    smtp_integration, dovecot_integration, admin_user, settings
) -> None:
    settings.INTEGRATION_FAILURES_BEFORE_ALERT = 3
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    password = mailbox.incoming_password
    EmailIntegration.objects.filter(pk=mailbox.pk).update(incoming_password="wrong")
    mailbox.refresh_from_db()
    alerts = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.SYSTEM_ALERT)
    for _ in range(5):
        assert run_pass(integration=mailbox).failed
    (alert,) = alerts
    assert alert.to_addresses == [admin_user.email]
    assert mailbox.name in alert.subject
    assert "failed to fetch email 3 times in a row" in alert.text_body

    EmailIntegration.objects.filter(pk=mailbox.pk).update(incoming_password=password)
    mailbox.refresh_from_db()
    assert not run_pass(integration=mailbox).failed
    mailbox.refresh_from_db()
    state = state_of(mailbox)
    assert (state.consecutive_failures, state.failure_alert_sent_at) == (0, None)
    assert alerts.count() == 1


def test_notification_texts_are_plain_text_not_html_escaped(smtp_integration, admin_user):
    from records import signals

    smtp_integration(encryption="tls")
    record = a_record(title="Problème d'accès <VPN>")
    signals.record_created.send(sender=Message, record=record, message=None, automatic=False)
    to_user = OutboxEmail.objects.get(recipient="jane@customer.test")
    assert to_user.subject == f"We received your request: Problème d'accès <VPN> [#{record.pk}]"
    assert "Problème d'accès <VPN>" in to_user.text_body
    html_part = parsed(composed_bytes(to_user)).get_body(("html",)).get_content()
    assert "&lt;VPN&gt;" in html_part  # the HTML part escapes it once


def test_change_notifications_name_fields_and_spare_the_end_user_staff_details(
    smtp_integration, admin_user, django_user_model
):
    smtp_integration(encryption="tls")
    agent = django_user_model.objects.create_user(
        username="agent", email="agent@desk.test", is_staff=True
    )
    # An agent who works records (admin notifications go only to staff who may view them).
    agent.user_permissions.add(
        Permission.objects.get(content_type__app_label="records", codename="view_servicerecord")
    )
    record = a_record()
    OutboxEmail.objects.all().delete()
    change_record_details(
        record=record,
        actor=admin_user,
        assigned_admin=agent,
        status=Status.objects.get(name="In Progress"),
    )
    to_user = OutboxEmail.objects.get(recipient="jane@customer.test")
    assert "Status: New -> In Progress" in to_user.text_body
    assert "agent" not in to_user.text_body
    to_agent = OutboxEmail.objects.get(recipient="agent@desk.test")
    assert "Assigned admin: (none) -> agent" in to_agent.text_body
    assert "Assigned_admin" not in to_agent.text_body


def test_replies_thread_on_what_the_end_user_saw_not_on_admin_notifications(
    smtp_integration, admin_user
):
    smtp_integration(encryption="tls")
    record = a_record()
    Message.objects.create(
        record=record, direction="in", message_id="<from-jane@x>", from_address="jane@customer.test"
    )
    Message.objects.create(
        record=record, direction="out", message_id="<to-admins@x>", to_addresses=["admin@desk.test"]
    )
    reply = post_agent_reply(record=record, author=admin_user, body="Hello")
    row = reply.outbox.get()
    assert row.in_reply_to == "<from-jane@x>"
    assert b"to-admins" not in composed_bytes(row)


def test_an_integration_that_stopped_sending_fails_its_queued_emails(
    quiet, smtp_server, smtp_integration
):
    integration = smtp_integration(encryption="tls")
    queue_email(
        kind=OutboxEmail.Kind.NOTIFICATION,
        to=["jane@customer.test"],
        subject="s",
        text="t",
        automatic=False,
    )
    EmailIntegration.objects.filter(pk=integration.pk).update(outgoing_enabled=False)
    smtp_server.clear()
    assert send_due().failed == 1
    assert smtp_server.messages == []
    assert "no longer sends" in OutboxEmail.objects.get().last_error
