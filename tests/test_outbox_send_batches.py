"""Draining the outbox in chunks against a real aiosmtpd: one SMTP session for the whole
drain, each chunk's outcome committed before the next is sent, and the stored bytes sent
again, unchanged, on every retry."""

from __future__ import annotations

import email
from datetime import timedelta
from email.policy import default as default_policy

import pytest
from django.utils import timezone

from integrations.models import EmailIntegration
from mailworker.delivery import SEND_CHUNK, drain, results, send_due
from mailworker.models import OutboxEmail
from mailworker.outbound.compose import HeaderInjectionError, compose
from mailworker.outbound.queue import queue_email
from mailworker.senders import Envelope
from mailworker.senders.smtp import SmtpSender
from records.models import Message, ServiceRecord
from records.services import create_record, get_or_create_end_user
from tests.smtpd import _Handler

pytestmark = pytest.mark.django_db
State = OutboxEmail.State


def a_record() -> ServiceRecord:
    requester, _ = get_or_create_end_user(email="jane@customer.test")
    return create_record(title="Printer broken", description="", requester=requester)


def queue_notifications(count: int, *, record: ServiceRecord | None = None) -> None:
    for n in range(count):
        queue_email(
            kind=OutboxEmail.Kind.NOTIFICATION,
            to=[f"user{n}@customer.test"],
            subject=f"Notification {n:04d}",
            text=f"Your record was updated ({n}).",
            html=f"<p>Your record was updated ({n}).</p>",
            record=record,
        )


def subjects(smtp_server) -> list[str]:
    return [email.message_from_bytes(m.raw)["Subject"] for m in smtp_server.messages]


def test_a_drain_of_several_chunks_uses_one_smtp_session_and_logs_every_email(
    quiet, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="tls")
    record = a_record()
    total = 3 * SEND_CHUNK + 7
    queue_notifications(total, record=record)
    ServiceRecord.objects.filter(pk=record.pk).update(updated_at=timezone.now() - timedelta(days=1))
    smtp_server.clear()

    report = send_due()

    assert (report.sent, report.retrying, report.failed) == (total, 0, 0)
    assert smtp_server.connections == 1
    assert sorted(subjects(smtp_server)) == [f"Notification {n:04d}" for n in range(total)]
    rows = OutboxEmail.objects.order_by("id")
    assert {row.state for row in rows} == {State.SENT}
    assert all(row.smtp_response.startswith("250 2.0.0 Ok: queued as") for row in rows)
    # Each email's own answer, not one answer for the chunk.
    assert len({row.smtp_response for row in rows}) == total
    logged = Message.objects.filter(record=record, direction="out")
    assert logged.count() == total
    assert {row.log_message.message_id for row in rows} == {row.message_id for row in rows}
    record.refresh_from_db()
    assert record.updated_at > timezone.now() - timedelta(minutes=5)


def test_a_session_the_server_closed_between_chunks_is_opened_again(
    smtp_server, smtp_integration
) -> None:
    integration: EmailIntegration = smtp_integration(encryption="tls")
    smtp_server.clear()

    def envelopes(first: int) -> list[Envelope]:
        return [
            Envelope("desk@desk.test", [f"u{n}@customer.test"], b"Subject: x\r\n\r\nx\r\n")
            for n in range(first, first + 3)
        ]

    with SmtpSender(integration) as sender:
        before = sender.send(envelopes(0))
        smtp_server.stop()  # drops the open connection, as a server closing idle ones does
        smtp_server.start()
        after = sender.send(envelopes(3))

    assert all(d.accepted for d in before + after)
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [
        f"u{n}@customer.test" for n in range(6)
    ]


def test_a_server_that_takes_few_emails_a_connection_gets_them_all_at_once(
    quiet, smtp_server, smtp_integration, monkeypatch
) -> None:
    """Servers limit the emails of one connection (Exim: 1000 by default) and answer the
    next MAIL with 421: the session kept over chunks then opens a new one."""
    smtp_integration(encryption="tls")
    limit, total = 60, 2 * SEND_CHUNK + 30
    queue_notifications(total)
    smtp_server.clear()
    accept = _Handler.handle_MAIL

    async def at_most_60_a_connection(self, server, session, envelope, address, options):
        session.mails = getattr(session, "mails", 0) + 1
        if session.mails > limit:
            return "421 4.7.0 Too many messages for one connection, try again"
        return await accept(self, server, session, envelope, address, options)

    monkeypatch.setattr(_Handler, "handle_MAIL", at_most_60_a_connection)

    report = send_due()

    assert (report.sent, report.retrying, report.failed) == (total, 0, 0)
    assert sorted(subjects(smtp_server)) == [f"Notification {n:04d}" for n in range(total)]
    assert smtp_server.connections == 3


def test_a_retry_sends_the_bytes_composed_on_the_first_attempt(
    quiet, smtp_server, smtp_integration
) -> None:
    smtp_integration(encryption="tls")
    queue_notifications(SEND_CHUNK + 2)
    smtp_server.stop()
    try:
        assert send_due().retrying == SEND_CHUNK + 2
    finally:
        smtp_server.start()
    stored = dict(OutboxEmail.objects.values_list("recipient", "raw_message"))
    assert all(stored.values())
    smtp_server.clear()
    OutboxEmail.objects.update(next_attempt_at=timezone.now())  # the back-off has passed

    assert send_due().sent == SEND_CHUNK + 2

    received = {m.rcpt_tos[0]: m.raw for m in smtp_server.messages}
    assert received == {recipient: bytes(raw) for recipient, raw in stored.items()}


def test_a_crash_before_a_chunk_is_recorded_resends_only_that_chunk(
    quiet, smtp_server, smtp_integration, monkeypatch
) -> None:
    smtp_integration(encryption="tls")
    total = 3 * SEND_CHUNK
    queue_notifications(total)
    smtp_server.clear()
    recorded = results._mark_sent
    calls = []

    def crash_on_the_second_chunk(sent):
        calls.append(len(sent))
        if len(calls) == 2:
            raise SystemExit("worker killed")
        recorded(sent)

    monkeypatch.setattr(results, "_mark_sent", crash_on_the_second_chunk)
    with pytest.raises(SystemExit):
        send_due()
    monkeypatch.setattr(results, "_mark_sent", recorded)
    assert OutboxEmail.objects.filter(state=State.SENT).count() == SEND_CHUNK
    # The claim of the killed worker runs out; another worker drains what it left.
    OutboxEmail.objects.filter(state=State.SENDING).update(
        claimed_at=timezone.now() - drain.CLAIM_TIMEOUT - timedelta(seconds=1)
    )

    assert send_due().sent == total - SEND_CHUNK

    received = subjects(smtp_server)
    twice = {subject for subject in received if received.count(subject) == 2}
    assert twice == {f"Notification {n:04d}" for n in range(SEND_CHUNK, 2 * SEND_CHUNK)}
    assert set(received) == {f"Notification {n:04d}" for n in range(total)}
    assert OutboxEmail.objects.filter(state=State.SENT).count() == total


def test_text_in_base64_is_sent_with_crlf_line_ends(smtp_integration) -> None:
    integration = smtp_integration(encryption="tls", outgoing_encoding="base64")
    composed = compose(
        integration=integration,
        to=["a@b.test"],
        subject="Grüße [#5]",
        text="Zeile 1\nZeile 2 €",
        html="<p>€</p>",
        automatic=True,
    )
    message = email.message_from_bytes(composed.raw, policy=default_policy)
    plain = message.get_body(("plain",))
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert plain.get_payload(decode=True) == "Zeile 1\r\nZeile 2 €\r\n".encode()
    assert message["Subject"] == "Grüße [#5]"
    assert message.get_body(("html",)).get_content().strip() == "<p>€</p>"


@pytest.mark.parametrize(
    "values",
    [
        {"references": ["<a@x>", "<b@x>\r\nBcc: victim@x.test"]},
        {"in_reply_to": "<a@x>\nBcc: victim@x.test"},
    ],
)
def test_line_breaks_in_threading_headers_are_refused(smtp_integration, values) -> None:
    integration = smtp_integration(encryption="tls")
    with pytest.raises(HeaderInjectionError):
        compose(
            integration=integration,
            to=["a@b.test"],
            subject="s",
            text="t",
            automatic=True,
            **values,
        )


def test_a_line_break_in_the_integration_name_is_refused(smtp_integration) -> None:
    # Settings > Email refuses such a name (the model's validator); one stored before that
    # is still refused when an email is written.
    integration = smtp_integration(encryption="tls")
    integration.name = "Desk\r\nBcc: victim@x.test"
    integration.save(update_fields=["name"])
    with pytest.raises(HeaderInjectionError):
        compose(integration=integration, to=["a@b.test"], subject="s", text="t", automatic=True)


def test_a_send_is_asked_for_only_when_something_can_be_sent(
    smtp_integration, django_capture_on_commit_callbacks
) -> None:
    """Emails no integration can send are marked failed as they are queued: asking a worker
    to drain the outbox for them was a task per pass for nothing (a thousand a minute with
    a thousand mailboxes and no sending integration)."""
    smtp_integration()
    record = a_record()
    EmailIntegration.objects.update(outgoing_enabled=False)
    with django_capture_on_commit_callbacks() as callbacks:
        queue_notifications(2, record=record)
    assert set(OutboxEmail.objects.values_list("state", flat=True)) == {State.FAILED}
    assert callbacks == []

    EmailIntegration.objects.update(outgoing_enabled=True)
    with django_capture_on_commit_callbacks() as callbacks:
        queue_notifications(2, record=record)
    assert [callback.__name__ for callback in callbacks] == ["request_sending"]
