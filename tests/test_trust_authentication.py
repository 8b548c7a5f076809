"""Sender authentication, tried as an attacker would: emails delivered into a real Dovecot
mailbox as the receiving server left them (its Received and Authentication-Results on top,
the sender's own headers, forged ones included, below), then a worker's pass, then what
the desk shows and does."""

from __future__ import annotations

import json
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from integrations.models import DmarcFailurePolicy, EmailIntegration
from integrations.services import delete_integration
from mailworker.models import NotificationSettings, OutboxEmail
from mailworker.pipeline.passes import run_pass
from records.models import Message, Quarantine, ServiceRecord, Status
from tests.mail import make_email
from tests.test_integration_import_export import run_export, run_import
from tests.test_settings_email_screens import NEW, form_data

pytestmark = pytest.mark.django_db

TRUSTED = "mx.desk.test"  # the desk's receiving server, as the admin typed it in Settings
ALICE = "Alice Example <alice@victim.test>"  # whom the attacker impersonates


def received(*, by: str, sender_host: str = "mail.attacker.test") -> str:
    return (
        f"Received: from {sender_host} ({sender_host} [192.0.2.66]) by {by} with ESMTPS id "
        "4XyZ1q; Fri, 20 Nov 2026 09:30:05 +0000"
    )


def stamp(value: str) -> str:
    return f"Authentication-Results: {value}"


def delivered(raw: bytes, *trace: str) -> bytes:
    """The email as the mailbox holds it: trace headers prepended, the newest first."""
    return "".join(f"{line}\r\n" for line in trace).encode() + raw


def from_alice(**kwargs: Any) -> bytes:
    return make_email(sender=ALICE, **kwargs)


SERVER_SAYS_FAIL = stamp(
    f"{TRUSTED}; spf=pass smtp.mailfrom=attacker.test; dmarc=fail (p=none) header.from=victim.test"
)
FORGED_PASS_VALUE = (
    f"{TRUSTED}; spf=pass smtp.mailfrom=victim.test; dmarc=pass header.from=victim.test"
)
FORGED_PASS = stamp(FORGED_PASS_VALUE)


@pytest.fixture
def desk(dovecot, dovecot_integration):
    """An IMAP integration on Dovecot that trusts mx.desk.test's Authentication-Results."""

    class Desk:
        integration: EmailIntegration = dovecot_integration(trusted_authserv_ids=[TRUSTED])

        def receive(self, *raws: bytes) -> None:
            dovecot.deliver(self.integration.incoming_username, list(raws))
            report = run_pass(integration=self.integration)
            assert not report.failed, report.errors
            assert dovecot.count(self.integration.incoming_username) == 0

        def configure(self, **fields: Any) -> None:
            EmailIntegration.objects.filter(pk=self.integration.pk).update(**fields)
            self.integration.refresh_from_db()

    return Desk()


def only_message() -> Message:
    messages = list(Message.objects.all())
    assert len(messages) == 1, messages
    return messages[0]


def record_page(client: Client, record: ServiceRecord) -> str:
    response = client.get(reverse("records:detail", args=[record.pk]))
    assert response.status_code == 200
    return response.content.decode()


# DMARC failure, as the trusted server reports it, under each policy ------------------------


def test_a_dmarc_failure_is_marked_sender_not_verified_on_the_record(desk, admin_client) -> None:
    assert desk.integration.dmarc_failure_policy == DmarcFailurePolicy.MARK  # the default
    desk.receive(delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL))

    message = only_message()
    assert message.sender_verified is False
    assert message.authentication == "dmarc=fail header.from=victim.test (mx.desk.test)"
    page = record_page(admin_client, message.record)
    assert '<span class="sender-not-verified"' in page
    assert "Sender not verified" in page
    assert "dmarc=fail header.from=victim.test (mx.desk.test)" in page


def test_accept_keeps_the_email_and_the_facts_without_the_mark(desk, admin_client) -> None:
    desk.configure(dmarc_failure_policy=DmarcFailurePolicy.ACCEPT)
    desk.receive(delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL))

    message = only_message()
    assert message.sender_verified is False
    page = record_page(admin_client, message.record)
    assert "Sender not verified" not in page
    assert "dmarc=fail header.from=victim.test (mx.desk.test)" in page


def test_quarantine_holds_the_email_with_the_reason(desk) -> None:
    desk.configure(dmarc_failure_policy=DmarcFailurePolicy.QUARANTINE)
    desk.receive(delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL))

    assert not ServiceRecord.objects.exists()
    held = Quarantine.objects.get()
    assert held.reason == ("sender failed DMARC: dmarc=fail header.from=victim.test (mx.desk.test)")
    assert held.from_address == "alice@victim.test"


def test_a_pass_from_the_trusted_server_verifies_the_sender(desk, admin_client) -> None:
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED, sender_host="mail.victim.test"),
            stamp(f"{TRUSTED}; dkim=pass header.d=victim.test; dmarc=pass header.from=victim.test"),
        )
    )

    message = only_message()
    assert message.sender_verified is True
    assert "Sender not verified" not in record_page(admin_client, message.record)


# Forged Authentication-Results -----------------------------------------------------------


def test_a_forged_pass_below_the_servers_fail_is_ignored(desk) -> None:
    """The sender writes "dmarc=pass" with the trusted server's own id at the very top of
    their headers, right below the server's stamp; the server's fail is what counts."""
    desk.configure(dmarc_failure_policy=DmarcFailurePolicy.QUARANTINE)
    desk.receive(
        delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL, FORGED_PASS),
        delivered(
            from_alice(headers={"Authentication-Results": FORGED_PASS_VALUE}),
            received(by=TRUSTED),
            SERVER_SAYS_FAIL,
        ),
    )

    assert not ServiceRecord.objects.exists()
    assert Quarantine.objects.count() == 2


def test_a_forged_pass_with_an_untrusted_id_verifies_nobody(desk) -> None:
    desk.receive(
        delivered(
            from_alice(
                headers={
                    "Authentication-Results": "mx.attacker.test; dmarc=pass header.from=victim.test"
                }
            ),
            received(by=TRUSTED),
            stamp("mx.attacker.test; dmarc=pass header.from=victim.test"),
        )
    )

    message = only_message()
    assert message.sender_verified is None
    assert message.authentication == ""


def test_a_forged_trusted_stamp_below_the_senders_own_received_is_ignored(desk) -> None:
    """The trusted server wrote no stamp (it only relayed); the one with its id was written
    before the message reached it: below a Received header of the attacker's host."""
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED),
            received(by="mail.attacker.test", sender_host="laptop.attacker.test"),
            FORGED_PASS,
        )
    )

    assert only_message().sender_verified is None


def test_a_later_hop_above_the_trusted_server_does_not_hide_its_stamp(desk) -> None:
    """The trusted MX delivered to a mailbox server of another domain, which added its own
    Received on top; the MX's stamp below it is still the one read."""
    desk.receive(
        delivered(
            from_alice(),
            received(by="imap.mailstore.test", sender_host="mx.desk.test"),
            received(by=TRUSTED),
            SERVER_SAYS_FAIL,
            FORGED_PASS,
        )
    )

    assert only_message().sender_verified is False


def test_a_pass_for_another_domain_does_not_verify_the_from_address(desk) -> None:
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED),
            stamp(f"{TRUSTED}; dmarc=pass header.from=attacker.test"),
        )
    )

    message = only_message()
    assert message.sender_verified is False
    assert "the sender's domain is victim.test" in message.authentication


@pytest.mark.parametrize("result", ["none", "temperror", "permerror", "bestguesspass"])
def test_results_that_prove_nothing_leave_the_sender_unverified_not_failed(desk, result) -> None:
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED),
            stamp(f"{TRUSTED}; dmarc={result} header.from=victim.test"),
        )
    )

    message = only_message()
    assert message.sender_verified is None
    assert message.authentication == f"dmarc={result} header.from=victim.test (mx.desk.test)"


def test_an_unreadable_stamp_is_noted_not_fatal_and_nothing_below_it_is_believed(desk) -> None:
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED),
            stamp(f"{TRUSTED}; dmarc"),  # cut short: does not parse
            FORGED_PASS,
        )
    )

    assert only_message().sender_verified is None
    assert ServiceRecord.objects.count() == 1


def test_without_trusted_servers_no_stamp_is_believed(desk) -> None:
    desk.configure(trusted_authserv_ids=[])
    desk.receive(delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL))

    assert only_message().sender_verified is None


# What Gmail and Exchange Online really write ------------------------------------------------


def test_gmail_stamp_below_its_own_received_headers_is_read(desk) -> None:
    desk.configure(trusted_authserv_ids=["mx.google.com"])
    desk.receive(
        delivered(
            from_alice(),
            "Received: by 2002:a05:7300:5a0c:b0:10d:2a0c:e80 with SMTP id x4csp1;"
            " Fri, 20 Nov 2026 01:30:06 -0800 (PST)",
            "Received: from mail.victim.test (mail.victim.test. [192.0.2.10]) by mx.google.com"
            " with ESMTPS id a1si2 for <desk@gmail.test>; Fri, 20 Nov 2026 01:30:05 -0800 (PST)",
            "Received-SPF: pass (google.com: domain of alice@victim.test designates 192.0.2.10"
            " as permitted sender) client-ip=192.0.2.10;",
            "Authentication-Results: mx.google.com;\r\n       dkim=pass header.i=@victim.test"
            " header.s=s1 header.b=AbCd;\r\n       spf=pass (google.com: domain of"
            " alice@victim.test designates 192.0.2.10 as permitted sender)"
            " smtp.mailfrom=alice@victim.test;\r\n       dmarc=pass (p=REJECT sp=REJECT"
            " dis=NONE) header.from=victim.test",
            received(by="mail.victim.test", sender_host="laptop.victim.test"),
        )
    )

    message = only_message()
    assert message.sender_verified is True
    assert message.authentication == "dmarc=pass header.from=victim.test (mx.google.com)"


EXCHANGE_FAIL = (
    "Authentication-Results: spf=fail (sender IP is 192.0.2.66)\r\n smtp.mailfrom=victim.test;"
    " dkim=none (message not signed)\r\n header.d=none;dmarc=fail action=oreject\r\n"
    " header.from=victim.test;compauth=fail reason=000"
)


def test_exchange_online_stamp_without_authserv_id_is_read_and_a_forgery_below_ignored(
    desk,
) -> None:
    desk.configure(trusted_authserv_ids=["mx.microsoft.com"])
    desk.receive(
        delivered(
            from_alice(),
            "Received: from DM6PR02MB1234.namprd02.prod.outlook.com (2603:10b6:5:1::1) by"
            " BY5PR02MB5678.namprd02.prod.outlook.com with HTTPS; Fri, 20 Nov 2026 09:30:07 +0000",
            EXCHANGE_FAIL,
            "Received-SPF: Fail (protection.outlook.com: domain of victim.test does not"
            " designate 192.0.2.66 as permitted sender) receiver=protection.outlook.com;",
            "Received: from mail.attacker.test (192.0.2.66) by"
            " BN8NAM11FT012.mail.protection.outlook.com (10.13.177.1) with Microsoft SMTP"
            " Server; Fri, 20 Nov 2026 09:30:06 +0000",
            # The sender's own, in Microsoft's form: below Exchange Online's, so ignored.
            "Authentication-Results: spf=pass smtp.mailfrom=victim.test; dmarc=pass"
            " action=none header.from=victim.test;compauth=pass reason=100",
        )
    )

    message = only_message()
    assert message.sender_verified is False
    assert message.authentication == "dmarc=fail header.from=victim.test (mx.microsoft.com)"


def test_exchange_online_stray_domains_between_results_are_left_out(desk) -> None:
    desk.configure(trusted_authserv_ids=["mx.microsoft.com"])
    desk.receive(
        delivered(
            from_alice(),
            "Authentication-Results: spf=pass (sender IP is 192.0.2.10)"
            " smtp.mailfrom=victim.test; desk.test; dkim=pass (signature was verified)"
            " header.d=victim.test;desk.test; dmarc=pass action=none header.from=victim.test;",
            "Received: from mail.victim.test (192.0.2.10) by"
            " AM2PEPF0001C70D.mail.protection.outlook.com with Microsoft SMTP Server;"
            " Fri, 20 Nov 2026 09:30:06 +0000",
        )
    )

    assert only_message().sender_verified is True


def test_a_header_without_authserv_id_is_nobodys_word_unless_exchange_online_is_trusted(
    desk,
) -> None:
    desk.receive(
        delivered(
            from_alice(),
            received(by=TRUSTED),
            "Authentication-Results: dmarc=pass action=none header.from=victim.test",
        )
    )

    assert only_message().sender_verified is None


# A staff address writing "Re: #N" -----------------------------------------------------------


@pytest.fixture
def record_of_jane(desk) -> ServiceRecord:
    desk.receive(make_email())
    record = ServiceRecord.objects.get()
    responded = Status.objects.get(name="User Responded")
    desk.configure(change_status_to=responded)
    NotificationSettings.objects.update_or_create(
        pk=1,
        defaults={
            "end_user_on_created": False,
            "admins_on_created": False,
            "admins_on_updated": False,
            "end_user_on_updated": True,  # the relay an attacker would want
            "end_user_on_details_changed": False,
            "admins_on_details_changed": False,
        },
    )
    return record


def agent_reply(record: ServiceRecord, *trace: str, message_id: str) -> bytes:
    raw = make_email(
        sender="Agent Smith <agent@desk.test>",
        subject=f"Re: #{record.pk} Printer on floor 3",
        body="Please install the driver from http://driver.attacker.test/",
        message_id=message_id,
    )
    return delivered(raw, *trace)


def test_a_staff_address_with_a_forged_stamp_is_an_outsider(
    desk, record_of_jane, make_staff
) -> None:
    agent = make_staff("agent")
    message_id = make_msgid(domain="attacker.test")
    desk.receive(
        agent_reply(
            record_of_jane,
            received(by=TRUSTED),
            # Forged twice over: an untrusted id, then the trusted id under the sender's host.
            stamp("mx.attacker.test; dmarc=pass header.from=desk.test"),
            received(by="mail.attacker.test", sender_host="laptop.attacker.test"),
            stamp(f"{TRUSTED}; dmarc=pass header.from=desk.test"),
            message_id=message_id,
        )
    )

    message = Message.objects.get(message_id=message_id)
    assert message.sender_verified is None
    assert message.author is None  # not counted as the agent's
    assert message.author != agent
    record_of_jane.refresh_from_db()
    assert message.record == record_of_jane
    assert record_of_jane.status.name == "User Responded"  # treated as any sender's reply


def test_a_verified_staff_email_is_the_agents_message_and_changes_nothing(
    desk, record_of_jane, make_staff
) -> None:
    agent = make_staff("agent")
    status_before = record_of_jane.status
    outbox_before = OutboxEmail.objects.count()
    message_id = make_msgid(domain="desk.test")
    desk.receive(
        agent_reply(
            record_of_jane,
            received(by=TRUSTED, sender_host="smtp.desk.test"),
            stamp(f"{TRUSTED}; dkim=pass header.d=desk.test; dmarc=pass header.from=desk.test"),
            message_id=message_id,
        )
    )

    message = Message.objects.get(message_id=message_id)
    assert message.sender_verified is True
    assert message.author == agent
    assert message.record == record_of_jane
    record_of_jane.refresh_from_db()
    assert record_of_jane.status == status_before  # not "User Responded"
    # Not relayed to the requester: an agent answers with Reply on the record page.
    assert OutboxEmail.objects.count() == outbox_before


def test_a_verified_email_from_an_inactive_staff_user_is_an_outsiders(
    desk, record_of_jane, make_staff
) -> None:
    agent = make_staff("agent")
    agent.is_active = False
    agent.save()
    message_id = make_msgid(domain="desk.test")
    desk.receive(
        agent_reply(
            record_of_jane,
            received(by=TRUSTED, sender_host="smtp.desk.test"),
            stamp(f"{TRUSTED}; dmarc=pass header.from=desk.test"),
            message_id=message_id,
        )
    )

    message = Message.objects.get(message_id=message_id)
    assert message.author is None
    # No longer staff, and not on Jane's record: the integration's stranger policy (a new
    # record, by default) applies, and Jane's record is untouched.
    assert message.record != record_of_jane
    status_before = record_of_jane.status
    record_of_jane.refresh_from_db()
    assert record_of_jane.status == status_before


# Settings > Email: the providers' servers filled in; export and import ---------------------


@pytest.mark.parametrize(
    ("protocol", "extra", "expected"),
    [
        ("microsoft365", {"oauth_tenant": "contoso.onmicrosoft.test"}, ["mx.microsoft.com"]),
        ("google", {}, ["mx.google.com"]),
        ("imap", {}, []),
    ],
)
def test_settings_email_fills_in_the_providers_receiving_server(
    admin_client: Client, protocol: str, extra: dict[str, str], expected: list[str]
) -> None:
    data = form_data(
        incoming_protocol=protocol,
        oauth_client_id="app-1",
        oauth_client_secret="client-secret",
        oauth_access="delegated",
        trusted_authserv_ids="",
        **extra,
    )
    response = admin_client.post(NEW, data)
    assert response.status_code == 302, response.content.decode()[:3000]

    integration = EmailIntegration.objects.get(name="Support")
    assert integration.trusted_authserv_ids == expected
    edit = admin_client.get(reverse("integrations:edit", args=[integration.pk])).content.decode()
    for authserv_id in expected:
        assert authserv_id in edit


def test_settings_email_keeps_the_servers_the_admin_typed(admin_client: Client) -> None:
    data = form_data(
        incoming_protocol="google",
        oauth_client_id="app-1",
        oauth_client_secret="client-secret",
        oauth_access="delegated",
        trusted_authserv_ids="mx.corp.test\ngw.corp.test",
    )
    assert admin_client.post(NEW, data).status_code == 302

    assert EmailIntegration.objects.get().trusted_authserv_ids == ["mx.corp.test", "gw.corp.test"]


def test_the_dmarc_policy_and_trusted_servers_survive_export_and_import(
    make_integration, tmp_path: Path
) -> None:
    make_integration(
        name="Support",
        incoming_enabled=True,
        incoming_protocol="imap",
        incoming_server="mail.example.com",
        incoming_encryption="ssl",
        incoming_username="support@example.com",
        trusted_authserv_ids=["mx.desk.test", "mx2.desk.test"],
        dmarc_failure_policy=DmarcFailurePolicy.QUARANTINE,
    )
    exported = run_export("--with-secrets")
    incoming = json.loads(exported)[0]["incoming"]
    assert incoming["trusted_authserv_ids"] == ["mx.desk.test", "mx2.desk.test"]
    assert incoming["dmarc_failure_policy"] == "quarantine"
    path = tmp_path / "export.json"
    path.write_text(exported, encoding="utf-8")
    delete_integration(integration=EmailIntegration.objects.get())

    run_import(path)

    integration = EmailIntegration.objects.get()
    assert integration.trusted_authserv_ids == ["mx.desk.test", "mx2.desk.test"]
    assert integration.dmarc_failure_policy == DmarcFailurePolicy.QUARANTINE


# What a forged sender makes the desk send -------------------------------------------------


def test_a_sender_who_failed_dmarc_gets_no_acknowledgement(desk) -> None:
    """Backscatter: the acknowledgement would go to Alice, whose address the attacker forged."""
    NotificationSettings.objects.update_or_create(pk=1, defaults={"end_user_on_created": True})
    desk.receive(delivered(from_alice(), received(by=TRUSTED), SERVER_SAYS_FAIL))
    desk.receive(
        delivered(
            make_email(sender="Bob <bob@customer.test>", subject="Scanner jams"),
            received(by=TRUSTED, sender_host="mail.customer.test"),
            stamp(f"{TRUSTED}; dmarc=pass header.from=customer.test"),
        )
    )

    acknowledged = set(
        OutboxEmail.objects.filter(kind=OutboxEmail.Kind.NOTIFICATION).values_list(
            "recipient", flat=True
        )
    )
    assert acknowledged == {"bob@customer.test"}  # Bob, verified, hears; forged Alice does not


def test_words_of_a_forged_participant_are_not_relayed_to_the_requester(
    desk, record_of_jane
) -> None:
    """The attacker writes as Jane's colleague in Cc, whose address is on the record: the
    trusted server says DMARC failed, so the words stay on the record, marked, and the desk
    does not mail them to Jane under its own name."""
    desk.receive(
        delivered(
            make_email(
                sender="Jane Doe <jane@customer.test>",
                subject=f"Re: #{record_of_jane.pk} Printer on floor 3",
                body="Log in at http://desk.attacker.test/ to see your ticket",
            ),
            received(by=TRUSTED),
            stamp(f"{TRUSTED}; dmarc=fail header.from=customer.test"),
        )
    )

    forged = Message.objects.get(text_body__contains="desk.attacker.test")
    assert forged.record == record_of_jane
    assert forged.sender_verified is False
    relayed = OutboxEmail.objects.filter(kind=OutboxEmail.Kind.NOTIFICATION, record=record_of_jane)
    assert not relayed.filter(text_body__contains="desk.attacker.test").exists()

    # The same reply, verified, is relayed as "notify end user on update" says.
    desk.receive(
        delivered(
            make_email(
                sender="Jane Doe <jane@customer.test>",
                subject=f"Re: #{record_of_jane.pk} Printer on floor 3",
                body="It works again, thanks",
            ),
            received(by=TRUSTED, sender_host="mail.customer.test"),
            stamp(f"{TRUSTED}; dmarc=pass header.from=customer.test"),
        )
    )
    assert relayed.filter(text_body__contains="It works again").exists()
