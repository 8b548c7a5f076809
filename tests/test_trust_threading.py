"""Who may write into a record, written as the attacks: the stranger's email delivered into a
real mailbox (Dovecot), the worker's pass, and what the desk then sends (caught by aiosmtpd)
and shows.

Threading by headers trusts only the desk's own signed Message-IDs; "#N" (or a signed id)
from someone who is not on record N follows the integration's stranger policy.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from django.test import Client
from django.urls import reverse

from integrations.models import StrangerPolicy
from mailworker.models import NotificationSettings
from mailworker.outbound.message_ids import (
    record_of_signed_message_id,
    sign_message_id,
    unsigned_message_id,
)
from records.models import Message, Quarantine, ServiceRecord, Status
from records.selectors import is_on_record
from records.services import add_message, create_record, get_or_create_end_user
from tests.desk import Desk
from tests.mail import make_email

pytestmark = pytest.mark.django_db

JANE = "Jane Doe <jane@customer.test>"
MALLORY = "IT Support <mallory@attacker.test>"
PHISHING = "Your mailbox is full: log in at https://evil.test/reset to keep it."


@pytest.fixture
def desk(dovecot, dovecot_integration, smtp_server, smtp_integration) -> Desk:
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_integration(encryption="tls")
    smtp_server.clear()
    # The end user hears of every update: what a stranger could abuse to reach the requester.
    NotificationSettings.objects.update_or_create(
        pk=1,
        defaults={
            "end_user_on_created": True,
            "end_user_on_updated": True,
            "admins_on_created": False,
            "admins_on_updated": False,
        },
    )
    return Desk(dovecot, smtp_server, mailbox)


def body_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()


def open_janes_record(desk: Desk, **fields) -> tuple[ServiceRecord, EmailMessage]:
    """Jane's first email opens a record; returns it and the acknowledgement she received."""
    desk.receive(make_email(sender=JANE, **fields))
    record = ServiceRecord.objects.get(requester__email="jane@customer.test")
    (acknowledgement,) = desk.inbox_of("jane@customer.test")
    return record, acknowledgement


# Signed Message-IDs ------------------------------------------------------------------------


def test_the_desk_signs_the_message_ids_of_its_emails_with_the_record(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    message_id = acknowledgement["Message-ID"]
    assert message_id.startswith(f"<sd.{record.pk}.")
    assert record_of_signed_message_id(message_id) == record.pk
    # The message log keeps the same id, and a mail server folding its case changes nothing.
    assert record.messages.filter(direction="out", message_id=message_id).exists()
    assert record_of_signed_message_id(message_id.upper()) == record.pk


def test_signed_ids_refuse_edits_other_keys_and_odd_shapes(settings) -> None:
    signed = sign_message_id(record_id=124, domain="Desk.Example")
    assert signed.endswith("@desk.example>")
    assert len(f"Message-ID: {signed}") <= 78  # one header line, not folded, for such a domain
    assert record_of_signed_message_id(signed) == 124
    assert record_of_signed_message_id(signed.replace("<sd.124.", "<sd.125.")) is None
    assert record_of_signed_message_id(signed.replace("<sd.124.", "<sd.0124.")) is None
    assert record_of_signed_message_id(signed[:-1] + "x>") is not None  # the domain is free
    assert record_of_signed_message_id(signed.replace("@", "@" + "a" * 400)) is None
    assert record_of_signed_message_id(unsigned_message_id(domain="desk.example")) is None
    assert record_of_signed_message_id("<" + signed + ">") is None
    assert record_of_signed_message_id(signed.replace("k", "\u212a")) is None  # Kelvin sign
    # Another SECRET_KEY: no longer ours, unless the old key is kept as a fallback.
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "k" * 60, []
    assert record_of_signed_message_id(signed) is None
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "n" * 60
    assert record_of_signed_message_id(sign_message_id(record_id=7, domain="d.test")) == 7


# Thread hijack -----------------------------------------------------------------------------


def test_thread_hijack_a_reused_message_id_does_not_pull_the_requesters_reply(desk) -> None:
    # Jane writes with Mallory in Cc, so Mallory knows her Message-ID.
    first_id = make_msgid(domain="customer.test")
    record, acknowledgement = open_janes_record(
        desk, message_id=first_id, headers={"Cc": "mallory@attacker.test"}
    )
    # Mallory sends a new email that reuses it: the desk opens Mallory's own record.
    desk.receive(make_email(sender=MALLORY, subject="Printer", body="hi", message_id=first_id))
    hijack = ServiceRecord.objects.get(requester__email="mallory@attacker.test")
    seen_by_mallory = len(desk.inbox_of("mallory@attacker.test"))

    # Jane answers the acknowledgement; her mail client names her own first email too.
    ack_id = acknowledgement["Message-ID"]
    desk.receive(
        make_email(
            sender=JANE,
            subject=f"Re: {acknowledgement['Subject']}",
            body="The toner is new. Password for the printer admin page: hunter2",
            headers={"In-Reply-To": ack_id, "References": f"{first_id} {ack_id}"},
        ),
    )
    # And once more, with only her first email in References and the number in the subject.
    desk.receive(
        make_email(
            sender=JANE,
            subject=f"Re: Printer [#{record.pk}]",
            body="Any news?",
            headers={"In-Reply-To": first_id, "References": first_id},
        ),
    )
    assert [m.text_body.strip() for m in record.messages.filter(direction="in")][1:] == [
        "The toner is new. Password for the printer admin page: hunter2",
        "Any news?",
    ]
    assert list(hijack.messages.filter(direction="in").values_list("text_body", flat=True)) == [
        "hi\n"
    ]
    assert len(desk.inbox_of("mallory@attacker.test")) == seen_by_mallory
    assert not any("hunter2" in body_of(m) for m in desk.inbox_of("mallory@attacker.test"))


def test_an_incoming_message_id_alone_threads_nowhere(desk) -> None:
    first_id = make_msgid(domain="customer.test")
    open_janes_record(desk, message_id=first_id)
    counts = desk.receive(
        make_email(sender=JANE, subject="another thing", headers={"References": first_id})
    )
    assert counts["created"] == 1
    assert ServiceRecord.objects.count() == 2


# Replies to our emails ----------------------------------------------------------------------


def test_a_reply_to_our_notification_joins_the_record_with_an_edited_subject(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    counts = desk.receive(
        make_email(
            sender=JANE,
            subject="totally new words",
            body="Restarted, works now.",
            headers={"In-Reply-To": acknowledgement["Message-ID"].upper()},
        )
    )
    assert counts["appended"] == 1
    assert ServiceRecord.objects.count() == 1
    assert record.messages.filter(direction="in").last().text_body.strip() == (
        "Restarted, works now."
    )


def test_forged_ids_shaped_like_ours_do_not_thread(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    desk.receive(make_email(sender="bob@customer.test", subject="Bob's problem", body="bob"))
    bobs = ServiceRecord.objects.get(requester__email="bob@customer.test")
    ack_id = acknowledgement["Message-ID"]
    local, _, domain = ack_id.strip("<>").partition("@")
    sd, number, nonce, mac = local.split(".")
    assert (sd, number, len(mac)) == ("sd", str(record.pk), 26)
    bad_mac = f"<sd.{number}.{nonce}.{'a' * 26}@{domain}>"
    other_number = f"<sd.{bobs.pk}.{nonce}.{mac}@{domain}>"
    for forged in (bad_mac, other_number):
        desk.receive(
            make_email(
                sender="bob@customer.test",
                subject="no number here",
                body=f"forged {forged}",
                headers={"In-Reply-To": forged, "References": forged},
            )
        )
    assert record.messages.filter(direction="in").count() == 1
    assert bobs.messages.filter(direction="in").count() == 1
    assert ServiceRecord.objects.filter(title="no number here").count() == 2


def test_several_signed_ids_in_reply_to_first_then_the_newest_reference(desk) -> None:
    first, first_ack = open_janes_record(desk)
    desk.receive(make_email(sender=JANE, subject="Second problem", body="second"))
    second = ServiceRecord.objects.exclude(pk=first.pk).get()
    second_ack = desk.inbox_of("jane@customer.test")[-1]
    first_id, second_id = first_ack["Message-ID"], second_ack["Message-ID"]
    desk.receive(
        make_email(
            sender=JANE,
            subject="about both",
            body="to the first",
            headers={"In-Reply-To": first_id, "References": f"{first_id} {second_id}"},
        ),
        make_email(
            sender=JANE,
            subject="about both",
            body="to the second",
            headers={"References": f"{first_id} <unknown@customer.test> {second_id}"},
        ),
    )
    assert first.messages.filter(direction="in").last().text_body.strip() == "to the first"
    assert second.messages.filter(direction="in").last().text_body.strip() == "to the second"
    assert ServiceRecord.objects.count() == 2


# Stranger "#N" -----------------------------------------------------------------------------


def strangers_email(record: ServiceRecord) -> bytes:
    return make_email(sender=MALLORY, subject=f"Re: #{record.pk}", body=PHISHING)


@pytest.fixture
def responded() -> Status:
    return Status.objects.get(name="User Responded")


def test_stranger_number_opens_a_new_record_by_default(desk, responded) -> None:
    desk.configure(change_status_to=responded)
    record, _ = open_janes_record(desk)
    assert desk.mailbox.stranger_policy == StrangerPolicy.NEW_RECORD
    counts = desk.receive(strangers_email(record))
    assert counts["created"] == 1
    strangers = ServiceRecord.objects.get(requester__email="mallory@attacker.test")
    assert strangers.title == f"Re: #{record.pk}"
    record.refresh_from_db()
    assert record.messages.filter(direction="in").count() == 1
    assert record.status.name == "New"
    assert not any(PHISHING in body_of(m) for m in desk.inbox_of("jane@customer.test"))


def test_stranger_number_in_the_body_follows_the_policy_too(desk) -> None:
    desk.configure(search_body_for_record_number=True, stranger_policy=StrangerPolicy.QUARANTINE)
    record, _ = open_janes_record(desk)
    counts = desk.receive(
        make_email(sender=MALLORY, subject="Mailbox", body=f"About #{record.pk}: {PHISHING}")
    )
    assert counts["quarantined"] == 1
    assert record.messages.filter(direction="in").count() == 1
    assert len(desk.inbox_of("jane@customer.test")) == 1


def test_stranger_number_as_an_internal_note_changes_nothing_and_mails_no_one(
    desk, responded, admin_user
) -> None:
    desk.configure(change_status_to=responded, stranger_policy=StrangerPolicy.INTERNAL_NOTE)
    record, _ = open_janes_record(desk)
    updated_at = ServiceRecord.objects.get(pk=record.pk).updated_at
    sent_before = len(desk.smtp_server.messages)
    stranger_id = make_msgid(domain="attacker.test")
    counts = desk.receive(
        make_email(
            sender=MALLORY, subject=f"Re: #{record.pk}", body=PHISHING, message_id=stranger_id
        )
    )
    # Being logged once does not make Mallory a participant: the second try is a note too.
    desk.receive(make_email(sender=MALLORY, subject=f"Re: #{record.pk}", body="again"))
    assert counts["appended"] == 1
    notes = record.messages.filter(is_internal=True).order_by("id")
    assert [note.from_address for note in notes] == ["mallory@attacker.test"] * 2
    assert not ServiceRecord.objects.filter(requester__email="mallory@attacker.test").exists()
    record.refresh_from_db()
    assert (record.status.name, record.updated_at) == ("New", updated_at)
    assert len(desk.smtp_server.messages) == sent_before  # no email to anyone

    # The agents see it, marked; the requester's next email does not name it.
    client = Client()
    client.force_login(admin_user)
    page = client.get(reverse("records:detail", args=[record.pk])).content.decode()
    assert "Internal note — not from a participant of this record" in page
    assert PHISHING in page
    desk.receive(make_email(sender=JANE, subject=f"Re: #{record.pk}", body="Any news?"))
    (update,) = desk.inbox_of("jane@customer.test")[1:]
    assert stranger_id not in str(update["References"]) + str(update["In-Reply-To"])
    assert PHISHING not in body_of(update)
    record.refresh_from_db()
    assert record.status == responded  # Jane's own reply still moves it on


def test_stranger_number_is_quarantined_when_the_integration_says_so(desk) -> None:
    desk.configure(stranger_policy=StrangerPolicy.QUARANTINE)
    record, _ = open_janes_record(desk)
    counts = desk.receive(strangers_email(record))
    assert counts["quarantined"] == 1
    entry = Quarantine.objects.get()
    assert entry.reason == f"sender mallory@attacker.test is not on record #{record.pk}"
    assert record.messages.filter(direction="in").count() == 1
    assert ServiceRecord.objects.count() == 1
    assert len(desk.inbox_of("jane@customer.test")) == 1  # the acknowledgement only


def test_a_forwarded_notification_answered_by_someone_else_follows_the_policy(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    desk.receive(
        make_email(
            sender="colleague@customer.test",
            subject=f"Re: {acknowledgement['Subject']}",
            body="I have the same problem.",
            headers={"In-Reply-To": acknowledgement["Message-ID"]},
        )
    )
    assert record.messages.filter(direction="in").count() == 1
    assert ServiceRecord.objects.filter(requester__email="colleague@customer.test").exists()


def test_a_bounce_naming_a_record_is_kept_as_an_internal_note(desk) -> None:
    record, acknowledgement = open_janes_record(desk)
    counts = desk.receive(
        make_email(
            sender="MAILER-DAEMON@mx.customer.test",
            subject=f"Undeliverable: {acknowledgement['Subject']}",
            body="jane@customer.test: mailbox full",
        )
    )
    assert counts["appended"] == 1
    note = record.messages.get(is_internal=True)
    assert note.from_address == "mailer-daemon@mx.customer.test"


# The people on the record still write as before ----------------------------------------------


def test_the_requester_someone_in_cc_and_staff_still_append_by_number(
    desk, responded, make_staff
) -> None:
    desk.configure(change_status_to=responded, stranger_policy=StrangerPolicy.QUARANTINE)
    record, _ = open_janes_record(desk, headers={"Cc": "Bob <bob@customer.test>"})
    make_staff("agent")
    desk.receive(
        make_email(sender=JANE, subject=f"Re: #{record.pk}", body="from jane"),
        make_email(sender="bob@customer.test", subject=f"Re: #{record.pk}", body="from bob"),
        make_email(sender="agent@desk.test", subject=f"Re: #{record.pk}", body="from agent"),
    )
    logged = record.messages.filter(direction="in").order_by("id")
    assert [m.text_body.strip() for m in logged][1:] == ["from jane", "from bob", "from agent"]
    assert not logged.filter(is_internal=True).exists()
    assert not Quarantine.objects.exists()
    record.refresh_from_db()
    assert record.status == responded


def test_an_address_the_desk_wrote_to_may_answer(desk) -> None:
    """Someone the record's emails went to (here the copy of incoming emails) is on it."""
    desk.configure(copy_incoming_to="archive@customer.test")
    record, _ = open_janes_record(desk)
    assert Message.objects.filter(
        record=record, direction="out", to_addresses__icontains="archive@customer.test"
    ).exists()
    counts = desk.receive(
        make_email(sender="archive@customer.test", subject=f"Re: #{record.pk}", body="noted")
    )
    assert counts["appended"] == 1


def test_who_is_on_a_record_is_exact_about_addresses(django_user_model) -> None:
    """The look-up behind "who may write", on what the message log holds."""
    jane, _ = get_or_create_end_user(email="Jane@Customer.test", display_name="Jane")
    record = create_record(title="VPN", description="", requester=jane)
    add_message(
        record=record,
        direction="in",
        from_address="jane@customer.test",
        subject="VPN",
        text_body="",
        to_addresses=["support@desk.test"],
        cc_addresses=["zoë@customer.test", "bob@customer.test"],
    )
    note = add_message(
        record=record,
        direction="in",
        from_address="mallory@attacker.test",
        subject="",
        text_body="",
    )
    Message.objects.filter(pk=note.pk).update(is_internal=True, cc_addresses=["eve@x.test"])
    django_user_model.objects.create_user(username="gone", email="gone@desk.test", is_staff=True)
    django_user_model.objects.filter(username="gone").update(is_active=False)
    on = {
        address: is_on_record(record=record, address=address)
        for address in (
            "JANE@customer.test",
            "Zoë@customer.test",
            "bob@customer.test",
            "ob@customer.test",
            "mbob@customer.test",
            "mallory@attacker.test",
            "eve@x.test",
            "gone@desk.test",
            "",
        )
    }
    assert [address for address, yes in on.items() if yes] == [
        "JANE@customer.test",
        "Zoë@customer.test",
        "bob@customer.test",
    ]
