"""Caps protect outsiders, not the team (issue 11, part 6), written as the attack: one
outsider opens 15 records within a minute through the desk's real mailbox (Dovecot); what
goes out is caught by aiosmtpd. Before, the cap of 10 automatic emails an hour per address
applied to staff too: from the 11th record the agents heard nothing, and the suppressed
emails showed only in /admin/."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from mailworker.delivery import send_due
from mailworker.models import OutboxEmail
from mailworker.pipeline.passes import run_pass
from tests.mail import make_email

pytestmark = pytest.mark.django_db
Kind, State = OutboxEmail.Kind, OutboxEmail.State
OUTSIDER = "loud@outsider.test"


def view_records() -> Permission:
    return Permission.objects.get(content_type__app_label="records", codename="view_servicerecord")


def received_by(smtp_server, address: str) -> list:
    return [message for message in smtp_server.messages if address in message.rcpt_tos]


@pytest.fixture
def desk(smtp_server, smtp_integration, dovecot, dovecot_integration, admin_user):
    smtp_integration(encryption="tls")
    mailbox = dovecot_integration(protocol="imap", encryption="ssl")
    smtp_server.clear()
    return mailbox


def fifteen_records(dovecot, desk) -> None:
    dovecot.deliver(
        desk.incoming_username,
        [
            make_email(sender=OUTSIDER, subject=f"Question {n}", body=f"About {n}")
            for n in range(15)
        ],
    )
    assert run_pass(integration=desk).counts["created"] == 15


def test_15_records_in_a_minute_reach_every_agent_while_the_outsider_is_capped(
    desk, dovecot, smtp_server, admin_user, django_user_model, client: Client, settings
):
    settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR = 10
    # An agent who may view records through a group (as roles are given), and a staff
    # member who may not (e.g. someone who only manages integrations).
    agents = Group.objects.create(name="Agents")
    agents.permissions.add(view_records())
    agent = django_user_model.objects.create_user(
        username="agent", email="agent@desk.test", is_staff=True
    )
    agent.groups.add(agents)
    django_user_model.objects.create_user(
        username="integrator", email="integrator@desk.test", is_staff=True
    )

    fifteen_records(dovecot, desk)
    send_due()

    assert len(received_by(smtp_server, admin_user.email)) == 15
    assert len(received_by(smtp_server, "agent@desk.test")) == 15
    assert not OutboxEmail.objects.filter(
        recipient__in=[admin_user.email, "agent@desk.test"], state=State.SUPPRESSED
    ).exists()
    # The staff member without the view permission gets no record contents by email.
    assert received_by(smtp_server, "integrator@desk.test") == []
    assert not any("integrator@desk.test" in row.to_addresses for row in OutboxEmail.objects.all())
    # The outsider is capped at 10 acknowledgements; the other 5 are held back...
    assert len(received_by(smtp_server, OUTSIDER)) == 10
    suppressed = OutboxEmail.objects.filter(recipient=OUTSIDER, state=State.SUPPRESSED)
    assert suppressed.count() == 5

    # ... and each shows on its record's page with its reason.
    client.force_login(agent)
    for email in suppressed:
        page = client.get(f"/records/{email.record_id}/").text
        assert "Emails not sent" in page
        assert f'data-suppressed="{email.pk}"' in page
        assert f"10 automatic emails went to {OUTSIDER} within the hour already" in page
    sent = OutboxEmail.objects.filter(recipient=OUTSIDER, state=State.SENT).first()
    assert "Emails not sent" not in client.get(f"/records/{sent.record_id}/").text


def test_an_assigned_admin_without_the_view_permission_is_not_told(
    desk, dovecot, smtp_server, admin_user, django_user_model
):
    """Assigned to someone who may not view records (e.g. their role was taken away): the
    notification goes to the staff who may, not to them."""
    from mailworker.models import NotificationSettings
    from records.services import change_record_details

    NotificationSettings.objects.update_or_create(
        pk=1, defaults={"admin_recipients": NotificationSettings.AdminRecipients.ASSIGNED}
    )
    former = django_user_model.objects.create_user(
        username="former", email="former@desk.test", is_staff=True
    )
    dovecot.deliver(desk.incoming_username, [make_email(sender=OUTSIDER)])
    run_pass(integration=desk)
    record = OutboxEmail.objects.filter(recipient=OUTSIDER).get().record
    OutboxEmail.objects.all().delete()
    change_record_details(record=record, actor=None, assigned_admin=former)
    recipients = set(
        OutboxEmail.objects.filter(kind=Kind.NOTIFICATION).values_list("recipient", flat=True)
    )
    assert "former@desk.test" not in recipients
    assert admin_user.email in recipients


def test_forwards_of_ignored_emails_and_copies_of_incoming_emails_are_never_capped(
    desk, dovecot, smtp_server, django_user_model, settings
):
    """The admin chose these recipients (Settings > Email); an outsider writing a lot must
    not make them vanish, even at an outside address (an archive) or an end user's."""
    settings.AUTOMATIC_EMAILS_PER_RECIPIENT_PER_HOUR = 10
    auditor = django_user_model.objects.create_user(username="auditor", email="audit@corp.test")
    desk.ignore_senders = ["spam@outsider.test"]
    desk.copy_incoming_to = "archive@corp.test"
    desk.save()
    desk.forward_ignored_to.add(auditor)
    dovecot.deliver(
        desk.incoming_username,
        [make_email(sender="spam@outsider.test", subject=f"Ad {n}", body=f"{n}") for n in range(12)]
        + [
            make_email(sender=f"user{n}@customer.test", subject=f"Issue {n}", body=f"{n}")
            for n in range(12)
        ],
    )
    report = run_pass(integration=desk)
    assert (report.counts["ignored"], report.counts["created"]) == (12, 12)
    send_due()

    assert len(received_by(smtp_server, "audit@corp.test")) == 12
    assert len(received_by(smtp_server, "archive@corp.test")) == 12
    assert not OutboxEmail.objects.filter(state=State.SUPPRESSED).exists()
    # Nor do they count against the cap: the same auditor, as the requester of records,
    # still gets the acknowledgements an outsider is allowed.
    dovecot.deliver(
        desk.incoming_username,
        [make_email(sender="audit@corp.test", subject=f"Mine {n}", body=f"{n}") for n in range(3)],
    )
    run_pass(integration=desk)
    acks = OutboxEmail.objects.filter(recipient="audit@corp.test", kind=Kind.NOTIFICATION)
    assert acks.count() == 3
    assert not acks.filter(state=State.SUPPRESSED).exists()
