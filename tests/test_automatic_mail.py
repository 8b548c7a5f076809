"""Automatic mail by kind, through a real mailbox (Dovecot) and what the desk then sends (caught
by aiosmtpd): out-of-office replies are ignored, monitoring alerts open records nobody
acknowledges, bulk mail follows the integration's policy, and bounces of the desk's own
emails (RFC 3464 and the shapes Exchange and Postfix write) mark that email bounced."""

from __future__ import annotations

import email
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import make_msgid

import pytest
from django.test import Client
from django.urls import reverse

from integrations.models import BulkMailPolicy
from mailworker.bounces import read_bounce
from mailworker.models import NotificationSettings, OutboxEmail
from records.models import ProcessedEmail, Quarantine, ServiceRecord, Status, User
from tests.desk import Desk
from tests.mail import make_email

pytestmark = pytest.mark.django_db

JANE = "Jane Doe <jane@customer.test>"
NAGIOS = "Nagios <nagios@monitoring.customer.test>"
PRINTER = "HP LaserJet 4 <printer-floor3@customer.test>"
ADMIN = "admin@desk.test"


@pytest.fixture
def desk(dovecot, dovecot_integration, smtp_server, smtp_integration, admin_user) -> Desk:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    smtp_server.clear()
    NotificationSettings.objects.update_or_create(
        pk=1,
        defaults={
            "end_user_on_created": True,
            "end_user_on_updated": True,
            "admins_on_created": True,
            "admins_on_updated": True,
        },
    )
    return Desk(dovecot, smtp_server, mailbox)


def open_janes_record(desk: Desk) -> tuple[ServiceRecord, bytes]:
    """Jane's email opens a record; returns it and the acknowledgement as aiosmtpd got it."""
    desk.receive(make_email(sender=JANE))
    record = ServiceRecord.objects.get(requester__email="jane@customer.test")
    (acknowledgement,) = desk.raw_sent_to("jane@customer.test")
    desk.smtp_server.clear()
    return record, acknowledgement


def outcome_of(message_id: str) -> ProcessedEmail:
    return ProcessedEmail.objects.get(message_id=message_id)


# Out-of-office and other auto-replies ----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"Auto-Submitted": "auto-replied; owner-email=jane@customer.test"},
        {"X-Autoreply": "yes"},
        {"X-Autorespond": "Out of office"},
        {"Precedence": "auto_reply"},
        {"X-Auto-Response-Suppress": "All"},
        {"X-MS-Exchange-Inbox-Rules-Loop": "jane@customer.test"},
    ],
)
def test_an_out_of_office_with_no_record_is_ignored_and_not_answered(desk, headers) -> None:
    away = make_email(
        sender=JANE, subject="Automatic reply: Hello", body="I am away.", headers=headers
    )
    counts = desk.receive(away)
    assert counts["ignored"] == 1
    assert not ServiceRecord.objects.exists()
    assert not Quarantine.objects.exists()
    assert desk.smtp_server.messages == []
    marker = ProcessedEmail.objects.get()
    assert marker.outcome == ProcessedEmail.Outcome.IGNORED
    assert marker.record_id is None


def test_an_auto_reply_to_a_record_joins_it_without_status_change_or_notification(desk) -> None:
    desk.configure(change_status_to=Status.objects.get(name="User Responded"))
    record, _ = open_janes_record(desk)
    counts = desk.receive(
        make_email(
            sender=JANE,
            subject=f"Automatic reply: [#{record.pk}]",
            body="I am out of the office until Monday.",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    assert counts["appended"] == 1
    record.refresh_from_db()
    assert record.status.name == "New"
    assert record.messages.filter(direction="in").count() == 2
    assert desk.smtp_server.messages == []  # neither Jane nor the admins hear of it


# Auto-generated mail: a record, never an acknowledgement ---------------------------------


def test_a_monitoring_alert_opens_a_record_admins_hear_of_and_its_sender_does_not(desk) -> None:
    alert = make_email(
        sender=NAGIOS,
        subject="PROBLEM: mail01 disk /var is CRITICAL",
        body="Disk /var on mail01 is 98% full.",
        headers={"Auto-Submitted": "auto-generated"},
    )
    counts = desk.receive(alert)
    assert counts["created"] == 1
    record = ServiceRecord.objects.get()
    assert record.title == "PROBLEM: mail01 disk /var is CRITICAL"
    assert record.requester.email == "nagios@monitoring.customer.test"
    assert desk.inbox_of("nagios@monitoring.customer.test") == []
    (to_admin,) = desk.inbox_of(ADMIN)
    assert f"[#{record.pk}]" in to_admin["Subject"]
    # Nothing else was queued for the monitoring system, not even suppressed.
    assert not OutboxEmail.objects.filter(recipient="nagios@monitoring.customer.test").exists()


# Bulk mail: the integration's policy ----------------------------------------------------


def printer_report() -> bytes:
    return make_email(
        sender=PRINTER,
        subject="Toner low: black cartridge at 5%",
        body="Replace the black cartridge soon.",
        headers={"Precedence": "bulk"},
    )


def test_bulk_mail_opens_a_record_by_default_never_answered(desk) -> None:
    assert desk.mailbox.bulk_mail_policy == BulkMailPolicy.RECORD
    counts = desk.receive(printer_report())
    assert counts["created"] == 1
    assert ServiceRecord.objects.get().requester.email == "printer-floor3@customer.test"
    assert desk.inbox_of("printer-floor3@customer.test") == []
    assert len(desk.inbox_of(ADMIN)) == 1


def test_bulk_mail_is_ignored_when_the_integration_says_so(desk) -> None:
    desk.configure(bulk_mail_policy=BulkMailPolicy.IGNORE)
    list_mail = make_email(
        sender="News <news@vendor.test>",
        subject="Our November newsletter",
        headers={"List-Id": "News <news.vendor.test>", "List-Unsubscribe": "<mailto:u@x.test>"},
    )
    counts = desk.receive(printer_report(), list_mail)
    assert counts["ignored"] == 2
    assert not ServiceRecord.objects.exists()
    assert desk.smtp_server.messages == []


def test_bulk_mail_is_quarantined_when_the_integration_says_so(desk) -> None:
    desk.configure(bulk_mail_policy=BulkMailPolicy.QUARANTINE)
    report = printer_report()
    counts = desk.receive(report)
    assert counts["quarantined"] == 1
    entry = Quarantine.objects.get()
    assert "bulk mail" in entry.reason and "Precedence: bulk" in entry.reason
    assert bytes(entry.raw_email) == report
    assert desk.smtp_server.messages == []


def test_bulk_mail_naming_a_record_joins_it_whatever_the_policy(desk) -> None:
    desk.configure(bulk_mail_policy=BulkMailPolicy.QUARANTINE)
    record, _ = open_janes_record(desk)
    counts = desk.receive(
        make_email(sender=JANE, subject=f"Re: [#{record.pk}]", headers={"Precedence": "list"})
    )
    assert counts["appended"] == 1


# Bounces --------------------------------------------------------------------------------


def headers_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace").replace("\r\n", "\n")


def delivery_status(text: str) -> MIMEBase:
    """A message/delivery-status part: blocks of fields, a blank line between them."""
    part = MIMEBase("message", "delivery-status")
    part.set_payload([email.message_from_string(block + "\n") for block in text.split("\n\n")])
    return part


def rfc3464_dsn(
    original: bytes,
    *,
    recipient: str = "jane@customer.test",
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <jane@customer.test>: Recipient address rejected: "
    "User unknown in virtual mailbox table",
    headers_only: bool = True,
) -> bytes:
    """A Postfix bounce, as Postfix writes it: multipart/report with a text part, the
    delivery-status (a message block, then a recipient block) and the original's headers."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.customer.test (Mail Delivery System)"
    report["To"] = "support@desk.test"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = "Fri, 20 Nov 2026 09:31:02 +0000 (UTC)"
    report["Message-ID"] = make_msgid(domain="mx.customer.test")
    report["Auto-Submitted"] = "auto-replied"
    report.attach(
        MIMEText(
            "This is the mail system at host mx.customer.test.\n\n"
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n\n"
            "                   The mail system\n\n"
            f"<{recipient}>: host mx.customer.test said: {diagnostic.partition(';')[2]}\n",
            "plain",
            "us-ascii",
        )
    )
    status_part = delivery_status(
        "Reporting-MTA: dns; mx.customer.test\n"
        "X-Postfix-Queue-ID: 4ZxQ1r2Tq1z9sWN\n"
        "X-Postfix-Sender: rfc822; support@desk.test\n"
        "Arrival-Date: Fri, 20 Nov 2026 09:31:01 +0000 (UTC)\n"
        "\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"Original-Recipient: rfc822;{recipient}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mx.customer.test\n"
        f"Diagnostic-Code: {diagnostic}\n"
    )
    report.attach(status_part)
    if headers_only:
        report.attach(MIMEText(headers_of(original), "rfc822-headers", "us-ascii"))
    else:
        attached = MIMEBase("message", "rfc822")
        attached.set_payload([email.message_from_bytes(original)])
        report.attach(attached)
    return report.as_bytes(policy=SMTP)


def exchange_ndr(original: bytes, *, recipient: str = "jane@customer.test") -> bytes:
    """An Exchange Online non-delivery report: multipart/report whose readable part is
    multipart/alternative, the delivery-status, and the whole original attached."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "postmaster@customer.onmicrosoft.com"
    report["To"] = "support@desk.test"
    report["Subject"] = "Undeliverable: Your request was received"
    report["Date"] = "Fri, 20 Nov 2026 09:31:02 +0000"
    report["Message-ID"] = "<7b1c2a3e-0f4d-4e71-9f2a-3c1c0d1e2f3a@customer.onmicrosoft.com>"
    report["X-MS-Exchange-Message-Is-Ndr"] = ""
    report["Content-Language"] = "en-US"
    readable = MIMEMultipart("alternative")
    readable.attach(
        MIMEText(
            "Your message to jane@customer.test couldn't be delivered.\n\n"
            "jane wasn't found at customer.test.\n\n"
            "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
            "Recipient not found by SMTP address lookup'\n",
            "plain",
            "us-ascii",
        )
    )
    readable.attach(MIMEText("<p>Your message couldn't be delivered.</p>", "html", "us-ascii"))
    report.attach(readable)
    status_part = delivery_status(
        "Reporting-MTA: dns;DB5PR06MB1800.eurprd06.prod.outlook.com\n"
        "Received-From-MTA: dns;mail.desk.test\n"
        "Arrival-Date: Fri, 20 Nov 2026 09:31:01 +0000\n"
        "\n"
        f"Final-Recipient: rfc822;{recipient}\n"
        "Action: failed\n"
        "Status: 5.1.10\n"
        f"Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient {recipient}"
        " not found by SMTP address lookup\n"
    )
    report.attach(status_part)
    attached = MIMEBase("message", "rfc822")
    attached.set_payload([email.message_from_bytes(original)])
    report.attach(attached)
    return report.as_bytes(policy=SMTP)


def exim_bounce(original: bytes) -> bytes:
    """No report at all: Exim's X-Failed-Recipients, its text, the original attached."""
    bounce = MIMEMultipart("mixed")
    bounce["From"] = "Mail Delivery System <Mailer-Daemon@mx.customer.test>"
    bounce["To"] = "support@desk.test"
    bounce["Subject"] = "Mail delivery failed: returning message to sender"
    bounce["X-Failed-Recipients"] = "jane@customer.test"
    bounce["Auto-Submitted"] = "auto-replied"
    bounce["Message-ID"] = make_msgid(domain="mx.customer.test")
    bounce.attach(
        MIMEText(
            "This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            "  jane@customer.test\n"
            "    host mx.customer.test [192.0.2.10]\n"
            "    SMTP error from remote mail server after RCPT TO:<jane@customer.test>:\n"
            "    550 5.2.1 Mailbox disabled for this recipient\n",
            "plain",
            "us-ascii",
        )
    )
    attached = MIMEBase("message", "rfc822")
    attached.set_payload([email.message_from_bytes(original)])
    bounce.attach(attached)
    return bounce.as_bytes(policy=SMTP)


def acknowledgement_outbox(record: ServiceRecord) -> OutboxEmail:
    return OutboxEmail.objects.get(record=record, recipient="jane@customer.test")


def test_a_bounce_of_our_notification_marks_it_bounced_shows_it_and_flags_the_address(
    desk, admin_user
) -> None:
    record, acknowledgement = open_janes_record(desk)
    dsn = rfc3464_dsn(acknowledgement)
    counts = desk.receive(dsn)
    assert counts["bounce"] == 1
    assert not Quarantine.objects.exists()
    assert ServiceRecord.objects.count() == 1
    outbox = acknowledgement_outbox(record)
    assert outbox.state == OutboxEmail.State.BOUNCED
    assert outbox.bounced_at is not None
    assert outbox.bounce_reason == (
        "550 5.1.1 <jane@customer.test>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    jane = User.objects.get(email="jane@customer.test")
    assert jane.email_bounced_at is not None
    assert "User unknown" in jane.email_bounce_reason
    marker = ProcessedEmail.objects.get(outcome=ProcessedEmail.Outcome.BOUNCE)
    assert marker.record_id == record.pk
    # Nothing answers the bounce, and the record's log is unchanged.
    assert desk.smtp_server.messages == []
    assert record.messages.filter(direction="in").count() == 1
    client = Client()
    client.force_login(admin_user)
    page = client.get(reverse("records:detail", args=[record.pk])).content.decode()
    assert f'data-bounced="{outbox.pk}"' in page
    assert "bounced: 550 5.1.1 &lt;jane@customer.test&gt;: Recipient address rejected" in page
    assert "This address is bouncing" in page


@pytest.mark.parametrize(
    "build", [exchange_ndr, exim_bounce, lambda raw: rfc3464_dsn(raw, headers_only=False)]
)
def test_exchange_exim_and_postfix_bounces_are_recognised(desk, build) -> None:
    record, acknowledgement = open_janes_record(desk)
    counts = desk.receive(build(acknowledgement))
    assert counts["bounce"] == 1
    outbox = acknowledgement_outbox(record)
    assert outbox.state == OutboxEmail.State.BOUNCED
    assert outbox.bounce_reason.startswith("550 5.")
    assert User.objects.get(email="jane@customer.test").email_bounced_at is not None


def test_a_delay_warning_marks_nothing(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    counts = desk.receive(
        rfc3464_dsn(
            acknowledgement,
            action="delayed",
            status="4.4.1",
            diagnostic="smtp; 421 4.4.1 Connection timed out",
        )
    )
    assert counts["ignored"] == 1
    assert acknowledgement_outbox(record).state == OutboxEmail.State.SENT
    assert User.objects.get(email="jane@customer.test").email_bounced_at is None


def test_a_bounce_of_someone_elses_email_is_ignored(desk) -> None:
    theirs = make_email(sender="bob@customer.test", to="jane@customer.test", subject="Lunch?")
    counts = desk.receive(rfc3464_dsn(theirs))
    assert counts["ignored"] == 1
    assert not ServiceRecord.objects.exists()
    assert not Quarantine.objects.exists()
    assert not OutboxEmail.objects.filter(state=OutboxEmail.State.BOUNCED).exists()
    assert desk.smtp_server.messages == []


def test_a_forged_id_that_looks_like_ours_marks_nothing(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    message_id = acknowledgement_outbox(record).message_id
    at = message_id.index("@")
    forged_id = message_id[: at - 1] + ("a" if message_id[at - 1] != "a" else "b") + message_id[at:]
    forged = acknowledgement.replace(message_id.encode(), forged_id.encode())
    assert forged != acknowledgement
    counts = desk.receive(rfc3464_dsn(forged))
    assert counts["bounce"] == 0
    assert acknowledgement_outbox(record).state == OutboxEmail.State.SENT


def test_the_corpus_bounces_are_read() -> None:
    """The real DSNs of the corpus: the original's id and the remote reason, or a delay."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
    if not corpus.exists():
        pytest.skip("no corpus")
    office = read_bounce((corpus / "flanker/bounce/office365.eml").read_bytes())
    assert office.original_ids == ["<20171013111011.20866.254C2F3A4D7AA526@ninomail.com>"]
    (failure,) = office.failures()
    assert failure.recipient == "noname@example.com"
    assert failure.reason.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")
    full = read_bounce((corpus / "flanker/bounce/mailbox-full.eml").read_bytes())
    assert full.failures()[0].reason == "552 5.2.2 E4.12 user MAILBOX FULL"
    assert read_bounce((corpus / "flanker/bounce/no-mx.eml").read_bytes()).delayed_only
