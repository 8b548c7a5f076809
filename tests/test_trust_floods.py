"""Floods, written as the attack (issue 11, part 5): a script writes into the desk's real
mailbox (Dovecot) from one address, or from many addresses of one domain; the worker's pass
runs; what goes out is caught by aiosmtpd. Before, 500 emails from one address became 500
records in about a second, each forged address got an acknowledgement (backscatter)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone

from mailworker.delivery import send_due
from mailworker.models import OutboxEmail
from mailworker.pipeline.passes import run_pass
from records import signals
from records.models import Direction, Message, Quarantine, ServiceRecord
from records.services import add_message, create_record, get_or_create_end_user
from tests.mail import make_email

pytestmark = pytest.mark.django_db
Kind, State = OutboxEmail.Kind, OutboxEmail.State
ATTACKER = "mallory@attacker.test"


def flood_of(count: int, *, sender: str = ATTACKER, start: int = 0) -> list[bytes]:
    """Different emails (the duplicate guard must not be what stops them)."""
    return [
        make_email(sender=sender, subject=f"Invoice {n}", body=f"Pay invoice {n} today.")
        for n in range(start, start + count)
    ]


def received_by(smtp_server, address: str) -> list:
    return [message for message in smtp_server.messages if address in message.rcpt_tos]


@pytest.fixture
def desk(smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user):
    """A desk that reads a real mailbox and sends through aiosmtpd, with one admin."""
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_server.clear()
    return mailbox


def test_a_flood_from_one_address_opens_only_the_cap_and_holds_the_rest(
    desk, dovecot, smtp_server, admin_user, settings
):
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 20
    dovecot.deliver(desk.incoming_username, flood_of(60))
    report = run_pass(integration=desk)

    assert report.counts["created"] == 20
    assert report.counts["quarantined"] == 40
    assert ServiceRecord.objects.count() == 20
    held = Quarantine.objects.filter(flood_key=f"sender:{ATTACKER}")
    assert held.count() == 40
    assert all(entry.reason.startswith(f"flood from {ATTACKER}") for entry in held)
    # One alert for the flood, not one per held email.
    (alert,) = OutboxEmail.objects.filter(kind=Kind.SYSTEM_ALERT)
    assert alert.to_addresses == [admin_user.email]
    assert ATTACKER in alert.subject

    send_due()
    # No acknowledgement beyond the records opened: at most 20 were queued, and the cap
    # on automatic emails to an outside address lets 10 of them out.
    assert OutboxEmail.objects.filter(recipient=ATTACKER).count() == 20
    assert len(received_by(smtp_server, ATTACKER)) == 10
    # The admin hears of every record opened, and of the flood once.
    to_admin = received_by(smtp_server, admin_user.email)
    assert len(to_admin) == 21
    assert sum("Flood held in quarantine" in m.raw.decode() for m in to_admin) == 1

    # The flood goes on in the next pass: held, without a second alert.
    dovecot.deliver(desk.incoming_username, flood_of(5, start=60))
    assert run_pass(integration=desk).counts["quarantined"] == 5
    assert held.all().count() == 45
    assert OutboxEmail.objects.filter(kind=Kind.SYSTEM_ALERT).count() == 1
    assert ServiceRecord.objects.count() == 20


def test_500_emails_from_one_address_make_20_records(desk, dovecot, settings):
    dovecot.deliver(desk.incoming_username, flood_of(500))
    report = run_pass(integration=desk)
    assert report.counts == Counter({"created": 20, "quarantined": 480})
    assert Quarantine.objects.filter(flood_key=f"sender:{ATTACKER}").count() == 480
    assert OutboxEmail.objects.filter(kind=Kind.SYSTEM_ALERT).count() == 1
    assert OutboxEmail.objects.filter(recipient=ATTACKER).count() == 20


def test_a_flood_from_many_addresses_of_one_domain_is_held_by_the_domain_limit(
    desk, dovecot, smtp_server, admin_user, settings
):
    settings.FLOOD_RECORDS_PER_DOMAIN_PER_HOUR = 30
    evil = [
        make_email(sender=f"user{n}@evil.test", subject=f"Hello {n}", body=f"Click {n}")
        for n in range(50)
    ]
    # The same number from a public webmail domain: thousands of unrelated people share it,
    # so only its addresses are limited, one by one.
    webmail = [
        make_email(sender=f"person{n}@gmail.com", subject=f"Help {n}", body=f"Broken {n}")
        for n in range(50)
    ]
    dovecot.deliver(desk.incoming_username, evil + webmail)
    report = run_pass(integration=desk)

    assert report.counts == Counter({"created": 80, "quarantined": 20})
    assert ServiceRecord.objects.filter(requester__email__endswith="@evil.test").count() == 30
    assert ServiceRecord.objects.filter(requester__email__endswith="@gmail.com").count() == 50
    held = Quarantine.objects.filter(flood_key="domain:evil.test")
    assert held.count() == 20
    assert all(entry.reason.startswith("flood from evil.test") for entry in held)
    (alert,) = OutboxEmail.objects.filter(kind=Kind.SYSTEM_ALERT)
    assert "evil.test" in alert.subject
    # None of the 20 held senders hears from the desk.
    held_senders = set(held.values_list("from_address", flat=True))
    assert not OutboxEmail.objects.filter(recipient__in=held_senders).exists()


def test_the_desk_s_own_domain_is_never_held_as_a_domain_flood(desk, dovecot, settings):
    """A Monday morning: the company's staff write to their own desk from many addresses."""
    settings.FLOOD_RECORDS_PER_DOMAIN_PER_HOUR = 5
    colleagues = [
        make_email(sender=f"colleague{n}@desk.test", subject=f"VPN {n}", body=f"Down {n}")
        for n in range(12)
    ]
    dovecot.deliver(desk.incoming_username, colleagues)
    assert run_pass(integration=desk).counts == Counter({"created": 12})


def test_release_all_opens_the_held_records_without_acknowledgements(
    desk, dovecot, smtp_server, admin_user, settings, client: Client
):
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 5
    dovecot.deliver(desk.incoming_username, flood_of(12))
    run_pass(integration=desk)
    assert ServiceRecord.objects.count() == 5
    acks = OutboxEmail.objects.filter(recipient=ATTACKER)
    assert acks.count() == 5

    client.force_login(admin_user)
    listing = client.get("/quarantine/").text
    assert f"sender:{ATTACKER}" in listing and "Release all" in listing
    assert '<td class="count">7</td>' in listing  # one line for the flood, with its count
    assert 'data-quarantine="' not in listing  # its emails are not listed one by one there
    flood_page = client.get("/quarantine/", {"flood": f"sender:{ATTACKER}"}).text
    assert flood_page.count('data-quarantine="') == 7

    response = client.post("/quarantine/floods/release/", {"flood_key": f"sender:{ATTACKER}"})
    assert response.status_code == 302
    assert ServiceRecord.objects.count() == 12
    assert not Quarantine.objects.exists()
    assert acks.count() == 5  # the released emails acknowledged nobody
    # ... but the admins hear of the records they opened.
    assert (
        OutboxEmail.objects.filter(recipient=admin_user.email, kind=Kind.NOTIFICATION).count() == 12
    )
    followed = client.get(response.url).text
    assert "Released 7 emails of the flood: 7 created." in followed
    assert "The quarantine is empty." in followed


def test_release_all_dates_each_record_and_message_when_its_email_arrived(
    desk, dovecot, admin_user, settings, client: Client
):
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 1
    dovecot.deliver(desk.incoming_username, flood_of(4))
    run_pass(integration=desk)
    held = list(Quarantine.objects.order_by("pk"))
    assert len(held) == 3
    # Held for days before an admin let them through, each since a different time.
    arrived = {
        entry.original_id: timezone.now() - timedelta(days=3, hours=n)
        for n, entry in enumerate(held)
    }
    for entry in held:
        Quarantine.objects.filter(pk=entry.pk).update(received_at=arrived[entry.original_id])

    client.force_login(admin_user)
    client.post("/quarantine/floods/release/", {"flood_key": f"sender:{ATTACKER}"})

    released = Message.objects.filter(original_id__in=arrived).select_related("record")
    assert released.count() == 3
    for message in released:
        assert message.created_at == arrived[message.original_id]
        assert message.record.created_at == arrived[message.original_id]


def test_release_all_is_a_post_of_staff_who_may_change_the_quarantine(
    desk, dovecot, settings, client: Client, make_staff
):
    settings.FLOOD_RECORDS_PER_SENDER_PER_HOUR = 1
    dovecot.deliver(desk.incoming_username, flood_of(3))
    run_pass(integration=desk)
    key = f"sender:{ATTACKER}"
    viewer = make_staff("viewer")
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="records", codename="view_quarantine")
    )
    client.force_login(viewer)
    assert "/quarantine/floods/release/" not in client.get("/quarantine/").text
    assert client.post("/quarantine/floods/release/", {"flood_key": key}).status_code == 403
    assert client.get("/quarantine/floods/release/").status_code in (403, 405)
    assert Quarantine.objects.filter(flood_key=key).count() == 2

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(viewer)
    keepers = Group.objects.create(name="Quarantine keepers")
    keepers.permissions.add(
        Permission.objects.get(content_type__app_label="records", codename="change_quarantine")
    )
    viewer.groups.add(keepers)
    assert csrf_client.post("/quarantine/floods/release/", {"flood_key": key}).status_code == 403
    assert Quarantine.objects.filter(flood_key=key).count() == 2
    assert client.post("/quarantine/floods/release/", {"flood_key": key}).status_code == 302
    assert not Quarantine.objects.filter(flood_key=key).exists()


def test_no_acknowledgement_to_a_sender_whose_address_was_not_verified(smtp_integration):
    """The contract between the engines: the first message of a record says its sender
    failed verification (sender_verified False, written by the authentication filter) and
    the mail engine then tells nobody at that address that a record was opened."""
    smtp_integration(encryption="tls")
    requester, _ = get_or_create_end_user(email="ceo@victim.test")
    record = create_record(title="Wire the money", description="now", requester=requester)
    message = add_message(
        record=record,
        direction=Direction.INCOMING,
        from_address="ceo@victim.test",
        subject="Wire the money",
        text_body="now",
    )
    Message.objects.filter(pk=message.pk).update(sender_verified=False)
    message.refresh_from_db()
    signals.record_created.send(sender=Message, record=record, message=message, automatic=False)
    assert not OutboxEmail.objects.filter(recipient="ceo@victim.test").exists()

    verified = create_record(title="Printer", description="jam", requester=requester)
    first = add_message(
        record=verified,
        direction=Direction.INCOMING,
        from_address="ceo@victim.test",
        subject="Printer",
        text_body="jam",
    )
    signals.record_created.send(sender=Message, record=verified, message=first, automatic=False)
    assert OutboxEmail.objects.filter(recipient="ceo@victim.test").count() == 1
