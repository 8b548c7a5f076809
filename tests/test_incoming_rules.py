"""Every inbound rule, each through a real mailbox: Dovecot, a fetchmail pass, the database."""

from __future__ import annotations

import time
from email.utils import make_msgid

import pytest
from django.contrib.auth import get_user_model

from integrations.models import EmailIntegration
from mailworker.delivery import composed_bytes
from mailworker.headers import LOOP_HEADER
from mailworker.models import OutboxEmail
from mailworker.outbound.message_ids import sign_message_id
from mailworker.pipeline.passes import run_pass
from mailworker.status import state_of
from records.models import (
    EmailRule,
    EmailRuleCondition,
    Message,
    Priority,
    ProcessedEmail,
    Quarantine,
    ServiceRecord,
    Status,
)
from tests.mail import make_email

pytestmark = pytest.mark.django_db


@pytest.fixture
def desk(dovecot, dovecot_integration):
    """An IMAP integration on Dovecot, and a way to send it mail and run one pass."""

    class Desk:
        integration: EmailIntegration = dovecot_integration(protocol="imap", encryption="ssl")

        def receive(self, *raws: bytes, batch_size: int = 500):
            dovecot.deliver(self.integration.incoming_username, list(raws))
            report = run_pass(integration=self.integration, batch_size=batch_size)
            assert not report.failed, report.errors
            return report

        def left_in_mailbox(self) -> int:
            return dovecot.count(self.integration.incoming_username)

        def configure(self, **fields) -> None:
            EmailIntegration.objects.filter(pk=self.integration.pk).update(**fields)
            self.integration.refresh_from_db()

    return Desk()


def only_record() -> ServiceRecord:
    records = list(ServiceRecord.objects.all())
    assert len(records) == 1, records
    return records[0]


def test_a_new_email_opens_a_record_and_leaves_the_mailbox(desk) -> None:
    report = desk.receive(make_email())
    record = only_record()
    assert report.counts["created"] == 1
    assert record.title == "Printer on floor 3 is broken"
    assert "blank pages" in record.description
    assert record.status.name == "New"
    assert record.source_integration == desk.integration
    assert record.requester.email == "jane@customer.test"
    assert record.requester.is_staff is False
    assert record.requester.has_usable_password() is False
    assert [m.direction for m in record.messages.all()] == ["in"]
    assert desk.left_in_mailbox() == 0


def test_a_reply_with_the_record_number_joins_its_message_log(desk) -> None:
    desk.receive(make_email())
    record = only_record()
    desk.receive(make_email(subject=f"Re: [#{record.pk}] Printer", body="Still broken."))
    assert ServiceRecord.objects.count() == 1
    assert [m.text_body.strip() for m in record.messages.all()][-1] == "Still broken."


def test_a_reply_threads_by_our_signed_id_even_with_an_edited_subject(desk) -> None:
    first_id = make_msgid(domain="customer.test")
    desk.receive(make_email(message_id=first_id))
    record = only_record()
    # What the desk's acknowledgement of the record carried (no sending integration here).
    ours = sign_message_id(record_id=record.pk, domain="desk.test")
    desk.receive(make_email(subject="totally new words", headers={"In-Reply-To": ours}))
    assert ServiceRecord.objects.count() == 1
    assert record.messages.count() == 2
    # The sender's own Message-ID decides nothing (tests/test_trust_threading.py).
    desk.receive(make_email(subject="other words", headers={"In-Reply-To": first_id}))
    assert ServiceRecord.objects.count() == 2


def test_a_number_that_names_no_record_opens_a_new_one(desk) -> None:
    desk.receive(make_email(subject="Re: #99999 about my laptop"))
    assert only_record().title == "Re: #99999 about my laptop"


def test_first_number_by_default_last_when_configured(desk) -> None:
    # Both Jane's: who may write into a record is tests/test_trust_threading.py's business.
    desk.receive(make_email(subject="one"), make_email(subject="two"))
    first, second = ServiceRecord.objects.order_by("pk")
    subject = f"Re: #{first.pk} was merged into #{second.pk}"
    desk.receive(make_email(subject=subject, body="a"))
    assert (first.messages.count(), second.messages.count()) == (2, 1)
    desk.configure(use_last_record_number=True)
    desk.receive(make_email(subject=subject, body="b"))
    assert (first.messages.count(), second.messages.count()) == (2, 2)


def test_the_body_is_searched_only_when_the_integration_says_so(desk) -> None:
    desk.receive(make_email())
    record = only_record()
    body = f"About record #{record.pk}, any news?"
    desk.receive(make_email(subject="Any news?", body=body))
    assert ServiceRecord.objects.count() == 2
    desk.configure(search_body_for_record_number=True)
    desk.receive(make_email(subject="Any news, again?", body=body))
    assert ServiceRecord.objects.count() == 2
    assert record.messages.count() == 2


def test_a_reply_changes_the_status_unless_it_is_excepted(desk) -> None:
    responded = Status.objects.get(name="User Responded")
    closed = Status.objects.get(name="Closed")
    desk.configure(change_status_to=responded)
    desk.integration.unless_status_in.set([closed])
    desk.receive(make_email())
    record = only_record()
    desk.receive(make_email(subject=f"Re: #{record.pk}", body="one"))
    record.refresh_from_db()
    assert record.status == responded
    ServiceRecord.objects.filter(pk=record.pk).update(status=closed)
    desk.receive(make_email(subject=f"Re: #{record.pk}", body="two"))
    record.refresh_from_db()
    assert record.status == closed
    assert record.messages.count() == 3


def test_the_whitelist_lets_only_listed_senders_through(desk) -> None:
    desk.configure(whitelist_senders=["customer.test", "boss@partner.test"])
    report = desk.receive(
        make_email(sender="a@customer.test", body="1"),
        make_email(sender="boss@partner.test", body="2"),
        make_email(sender="other@partner.test", body="3"),
        make_email(sender="x@stranger.test", body="4"),
    )
    assert (report.counts["created"], report.counts["ignored"]) == (2, 2)
    assert desk.left_in_mailbox() == 0


def test_the_ignore_list_takes_addresses_and_domains(desk) -> None:
    desk.configure(ignore_senders=["noreply@vendor.test", "spam.test"])
    report = desk.receive(
        make_email(sender="noreply@vendor.test", body="1"),
        make_email(sender="news@mail.spam.test", body="2"),
        make_email(sender="sales@vendor.test", body="3"),
    )
    assert (report.counts["ignored"], report.counts["created"]) == (2, 1)
    assert only_record().requester.email == "sales@vendor.test"


def test_the_ignore_subject_regex_takes_java_style_flags(desk) -> None:
    desk.configure(ignore_subject_regex="(?iu)(out of office)|(?iu)(automatic reply)")
    report = desk.receive(
        make_email(subject="OUT OF OFFICE until Monday", body="1"),
        make_email(subject="Automatic Reply: hello", body="2"),
        make_email(subject="My office chair is broken", body="3"),
    )
    assert (report.counts["ignored"], report.counts["created"]) == (2, 1)


def test_a_catastrophic_regex_is_bounded_and_reported(desk) -> None:
    desk.configure(ignore_subject_regex="(a|aa)+$")
    started = time.monotonic()
    report = desk.receive(make_email(subject="a" * 60 + "!"))
    assert time.monotonic() - started < 10
    assert report.counts["created"] == 1  # a timeout counts as no match
    desk.integration.refresh_from_db()
    assert state_of(desk.integration).subject_regex_timed_out_at is not None


def test_duplicates_within_the_window_are_not_new_records(desk) -> None:
    report = desk.receive(make_email(), make_email())  # two different Message-IDs, same text
    assert (report.counts["created"], report.counts["duplicate"]) == (1, 1)


def test_a_duplicate_beyond_the_last_1000_opens_a_record(desk) -> None:
    desk.receive(make_email())
    ProcessedEmail.objects.bulk_create(
        ProcessedEmail(integration=desk.integration, key=f"filler-{n}", outcome="ignored")
        for n in range(1000)
    )
    report = desk.receive(make_email())
    assert report.counts["created"] == 1
    assert ServiceRecord.objects.count() == 2


def test_exempt_senders_are_never_duplicates(desk, django_user_model) -> None:
    django_user_model.objects.create_user(username="monitor", email="alerts@nagios.test")
    desk.configure(duplicate_exempt_senders=["probe@watch.test", "monitor"])
    report = desk.receive(
        make_email(sender="probe@watch.test", subject="disk full"),
        make_email(sender="probe@watch.test", subject="disk full"),
        make_email(sender="alerts@nagios.test", subject="load high"),
        make_email(sender="alerts@nagios.test", subject="load high"),
    )
    assert report.counts["created"] == 4


def test_mail_from_a_desk_mailbox_or_with_our_loop_header_is_ignored(desk) -> None:
    report = desk.receive(
        make_email(sender=desk.integration.incoming_username, body="1"),
        make_email(headers={LOOP_HEADER: "servicedesk"}, body="2"),
    )
    assert report.counts["ignored"] == 2
    assert not ServiceRecord.objects.exists()


def test_an_auto_reply_to_a_record_is_logged_without_status_change(desk) -> None:
    responded = Status.objects.get(name="User Responded")
    desk.configure(change_status_to=responded)
    desk.receive(make_email())
    record = only_record()
    desk.receive(
        make_email(
            subject=f"Automatic reply: #{record.pk}",
            body="I am out of the office.",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    record.refresh_from_db()
    assert record.messages.count() == 2
    assert record.status.name == "New"


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"X-Autoreply": "yes"},
        {"X-Auto-Response-Suppress": "All"},
        {"Return-Path": "<>"},
    ],
)
def test_an_auto_reply_matching_no_record_is_ignored(desk, headers) -> None:
    """Out-of-office replies and null-sender mail: logged, never a record (see
    test_automatic_mail.py for every kind)."""
    away = make_email(subject="I am away", headers=headers)
    report = desk.receive(away)
    assert report.counts["ignored"] == 1
    assert not ServiceRecord.objects.exists()
    assert not Quarantine.objects.exists()
    assert ProcessedEmail.objects.get().outcome == ProcessedEmail.Outcome.IGNORED


def test_bulk_mail_matching_no_record_opens_one_by_default(desk) -> None:
    report = desk.receive(make_email(subject="Toner low", headers={"Precedence": "bulk"}))
    assert report.counts["created"] == 1
    assert not OutboxEmail.objects.filter(recipient="jane@customer.test").exists()


def test_a_bounce_from_mailer_daemon_of_no_email_of_ours_is_ignored(desk) -> None:
    report = desk.receive(
        make_email(sender="MAILER-DAEMON@mx.customer.test", subject="Undelivered Mail")
    )
    assert report.counts["ignored"] == 1
    assert not Quarantine.objects.exists()
    assert not ServiceRecord.objects.exists()


def test_emojis_are_removed_when_the_integration_says_so(desk) -> None:
    desk.receive(make_email(subject="Printer 🔥🔥 broken 👍🏽", body="Help 🙏 please"))
    record = only_record()
    assert record.title == "Printer broken"
    assert "🙏" not in record.description and "Help" in record.description
    desk.configure(remove_emojis=False)
    desk.receive(make_email(subject="Coffee ☕ machine", sender="b@customer.test"))
    assert ServiceRecord.objects.filter(title="Coffee ☕ machine").exists()


def test_email_rules_route_and_assign_new_records(desk, django_user_model) -> None:
    agent = django_user_model.objects.create_user(
        username="agent", email="a@desk.test", is_staff=True
    )
    urgent = EmailRule.objects.create(name="Urgent", order=1, set_priority=Priority.HIGHEST)
    EmailRuleCondition.objects.create(
        rule=urgent, field="subject", operator="contains", value="URGENT"
    )
    vip = EmailRule.objects.create(name="VIP", order=2, assign_admin=agent, stop_processing=True)
    EmailRuleCondition.objects.create(
        rule=vip, field="sender", operator="ends_with", value="@vip.test"
    )
    EmailRule.objects.create(name="Never reached", order=3, set_priority=Priority.LOW)
    desk.receive(
        make_email(sender="ceo@vip.test", subject="urgent: payroll", body="1"),
        make_email(sender="x@customer.test", subject="question", body="2"),
    )
    vip_record = ServiceRecord.objects.get(requester__email="ceo@vip.test")
    plain = ServiceRecord.objects.get(requester__email="x@customer.test")
    assert (vip_record.priority, vip_record.assigned_admin) == (Priority.HIGHEST, agent)
    assert (plain.priority, plain.assigned_admin) == (Priority.NORMAL, None)


def test_a_known_sender_is_not_created_twice(desk, django_user_model) -> None:
    known = django_user_model.objects.create_user(username="jane", email="Jane@Customer.test")
    desk.receive(make_email(body="1"), make_email(subject="Another", body="2"))
    assert {record.requester for record in ServiceRecord.objects.all()} == {known}
    assert get_user_model().objects.filter(email__iexact="jane@customer.test").count() == 1


def test_an_email_over_the_size_limit_is_quarantined_and_the_sender_told_once(
    desk, settings
) -> None:
    settings.MAX_INCOMING_EMAIL_BYTES = 50_000
    big = make_email(attachments=[("scan.pdf", "application/pdf", b"%PDF" + b"x" * 80_000)])
    report = desk.receive(big)
    assert report.counts["quarantined"] == 1
    entry = Quarantine.objects.get()
    assert "larger than" in entry.reason
    assert len(entry.raw_email) < 50_000  # the headers only
    notice = OutboxEmail.objects.get(kind=OutboxEmail.Kind.SIZE_NOTICE)
    assert notice.to_addresses == ["jane@customer.test"]
    assert desk.left_in_mailbox() == 0


def test_ignored_emails_are_forwarded_to_the_chosen_users(
    desk, django_user_model, smtp_integration
) -> None:
    smtp_integration(encryption="tls")
    lead = django_user_model.objects.create_user(username="lead", email="lead@desk-staff.test")
    desk.integration.forward_ignored_to.set([lead])
    desk.configure(ignore_senders=["spam.test"])
    spam = make_email(sender="x@spam.test")
    desk.receive(spam)
    forward = OutboxEmail.objects.get(kind=OutboxEmail.Kind.FORWARD_IGNORED)
    assert forward.to_addresses == ["lead@desk-staff.test"]
    assert forward.state == OutboxEmail.State.PENDING
    assert bytes(forward.attached_email) == spam
    assert b'filename="original.eml"' in composed_bytes(forward)


def test_without_an_outgoing_integration_the_forward_fails_visibly(desk, django_user_model):
    lead = django_user_model.objects.create_user(username="lead", email="lead@desk-staff.test")
    desk.integration.forward_ignored_to.set([lead])
    desk.configure(ignore_senders=["spam.test"])
    desk.receive(make_email(sender="x@spam.test"))
    forward = OutboxEmail.objects.get(kind=OutboxEmail.Kind.FORWARD_IGNORED)
    assert forward.state == OutboxEmail.State.FAILED
    assert "turn on Outgoing Emails" in forward.last_error
    assert b"x@spam.test" in bytes(forward.attached_email)  # the email itself is kept


def test_attachments_and_inline_images_are_stored(desk) -> None:
    desk.receive(
        make_email(attachments=[("report.pdf", "application/pdf", b"%PDF-1.4 exact bytes")])
    )
    attachment = Message.objects.get().attachments.get()
    assert attachment.filename == "report.pdf"
    assert attachment.file.read() == b"%PDF-1.4 exact bytes"
