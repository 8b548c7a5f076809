"""One sender identity (issue 11, part 3): the address inside From's angle brackets is the
sender, a display name never supplies one, and an email whose sender is ambiguous is
quarantined with the reason. The attacks go through a real Dovecot mailbox and a pass."""

from __future__ import annotations

from email.utils import make_msgid

import pytest
from django.contrib.auth import get_user_model

from integrations.models import EmailIntegration
from mailworker.parsing import parse_email
from mailworker.pipeline.passes import run_pass
from records.models import Quarantine, ServiceRecord

pytestmark = pytest.mark.django_db


def raw_email(*header_lines: str, body: str = "Please reset my password.") -> bytes:
    """Header lines exactly as written: a composing library would repair what the attacker
    broke on purpose."""
    lines = [*header_lines]
    if not any(line.lower().startswith("to:") for line in header_lines):
        lines.append("To: support@desk.test")
    if not any(line.lower().startswith("subject:") for line in header_lines):
        lines.append("Subject: Password reset")
    lines += [f"Message-ID: {make_msgid(domain='attacker.test')}", ""]
    return ("\r\n".join(lines) + "\r\n" + body + "\r\n").encode()


@pytest.fixture
def desk(dovecot, dovecot_integration):
    class Desk:
        integration: EmailIntegration = dovecot_integration(protocol="imap", encryption="ssl")

        def receive(self, *raws: bytes):
            dovecot.deliver(self.integration.incoming_username, list(raws))
            report = run_pass(integration=self.integration, batch_size=500)
            assert not report.failed, report.errors
            return report

        def configure(self, **fields) -> None:
            EmailIntegration.objects.filter(pk=self.integration.pk).update(**fields)
            self.integration.refresh_from_db()

    return Desk()


def user_addresses() -> set[str]:
    return set(get_user_model().objects.values_list("email", flat=True))


# The attack: a display name that looks like the victim's address ----------------------------

IMPERSONATIONS = [
    "From: alice@victim.test <mallory@attacker.test>",
    "From: =?utf-8?q?x:?= alice@victim.test <mallory@attacker.test>",
    'From: "alice@victim.test" <mallory@attacker.test>',
    "From: =?utf-8?b?YWxpY2VAdmljdGltLnRlc3Q=?= <mallory@attacker.test>",
    "From: Alice (alice@victim.test) <mallory@attacker.test>",
]


@pytest.mark.parametrize("from_line", IMPERSONATIONS)
def test_an_address_in_the_display_name_never_becomes_the_requester(desk, from_line) -> None:
    desk.receive(raw_email(from_line))

    record = ServiceRecord.objects.get()
    assert record.requester.email == "mallory@attacker.test"
    assert "alice@victim.test" not in user_addresses()
    assert record.messages.get().from_address == "mallory@attacker.test"
    # Nor does it become the name an agent sees beside Mallory's address.
    assert "victim.test" not in record.requester.get_full_name()


def test_the_whitelist_sees_the_angle_bracket_address_not_the_display_name(desk) -> None:
    desk.configure(whitelist_senders=["alice@victim.test"])

    report = desk.receive(
        raw_email("From: alice@victim.test <mallory@attacker.test>"),
        raw_email("From: =?utf-8?q?x:?= alice@victim.test <mallory@attacker.test>"),
        raw_email("From: Alice <alice@victim.test>", "Subject: From Alice herself"),
    )

    assert report.counts["ignored"] == 2
    assert list(ServiceRecord.objects.values_list("title", flat=True)) == ["From Alice herself"]


def test_the_ignore_list_sees_the_angle_bracket_address(desk) -> None:
    desk.configure(ignore_senders=["mallory@attacker.test"])

    report = desk.receive(raw_email("From: alice@victim.test <mallory@attacker.test>"))

    assert report.counts["ignored"] == 1
    assert not ServiceRecord.objects.exists()


# Encoded words with line breaks -------------------------------------------------------------

BROKEN_ENCODED_WORDS = [
    "From: =?utf-8?q?x=0D=0A?= <_x@evil.test?=",
    "From: =?utf-8?q?x=0D=0A?= <_x@evil.test?= <mallory@attacker.test>",
    "From: =?utf-8?q?x=0D=0AFrom:_alice@victim.test?= _x@evil.test?=",
    "From: =?utf-8?q?=0D=0A<_x@evil.test?=",
    "From: =?utf-8?b?eA0KRnJvbTogYWxpY2VAdmljdGltLnRlc3QNCg==?= <_x@evil.test?=>",
]


@pytest.mark.parametrize("from_line", BROKEN_ENCODED_WORDS)
def test_a_crlf_encoded_word_never_makes_a_bogus_requester(desk, from_line) -> None:
    desk.receive(raw_email(from_line))

    assert not ServiceRecord.objects.exists()
    entry = Quarantine.objects.get()
    assert entry.reason.startswith("sender is ambiguous: From ")
    assert not any("?=" in address or "victim" in address for address in user_addresses())


def test_a_crlf_in_an_encoded_display_name_is_dropped_and_the_bracket_address_kept(desk) -> None:
    desk.receive(raw_email("From: =?utf-8?q?Bob=0D=0ABcc:_alice@victim.test?= <bob@customer.test>"))

    requester = ServiceRecord.objects.get().requester
    assert requester.email == "bob@customer.test"
    assert "\r" not in requester.get_full_name() and "\n" not in requester.get_full_name()


# Ambiguous senders are quarantined with the reason -------------------------------------------

AMBIGUOUS = [
    ("From: alice@victim.test, mallory@attacker.test", "no single Sender"),
    ("From: <alice@victim.test> <mallory@attacker.test>", "2 addresses in angle brackets"),
    ("From: Alice <alice@victim.test> mallory@attacker.test", "more after its address"),
    ("From: alice@victim.test mallory@attacker.test", "2 addresses"),
    ("From: Alice <alice@victim.test?=>", "malformed address"),
]


@pytest.mark.parametrize(("from_line", "reason"), AMBIGUOUS)
def test_an_ambiguous_sender_is_quarantined_with_its_reason(desk, from_line, reason) -> None:
    desk.receive(raw_email(from_line))

    assert not ServiceRecord.objects.exists()
    entry = Quarantine.objects.get()
    assert entry.reason.startswith("sender is ambiguous: ")
    assert reason in entry.reason
    assert entry.from_address == ""  # no guess is stored as the sender either


def test_two_from_headers_naming_different_people_are_quarantined(desk) -> None:
    desk.receive(raw_email("From: Alice <alice@victim.test>", "From: <mallory@attacker.test>"))

    entry = Quarantine.objects.get()
    assert "2 From headers name alice@victim.test, mallory@attacker.test" in entry.reason
    assert not ServiceRecord.objects.exists()


def test_several_authors_with_one_sender_header_are_that_sender(desk) -> None:
    desk.receive(
        raw_email(
            "From: Alice <alice@customer.test>, Bob <bob@customer.test>",
            "Sender: Bob <bob@customer.test>",
        )
    )

    assert ServiceRecord.objects.get().requester.email == "bob@customer.test"


def test_a_reply_without_any_from_address_is_still_the_requester_filters_business(desk) -> None:
    # No address at all is not ambiguous: the requester filter keeps such an email from
    # opening a record (there would be nobody to answer), as before.
    desk.receive(raw_email("From: undisclosed-recipients:;"))

    entry = Quarantine.objects.get()
    assert "has no sender address" in entry.reason


# Real-world From shapes keep working ---------------------------------------------------------

REAL_WORLD = [
    ('"Doe, John" <J.Doe@Example.com>', "Doe, John", "j.doe@example.com"),
    ("j.doe@example.com (John Doe)", "", "j.doe@example.com"),
    ("<j.doe@example.com>", "", "j.doe@example.com"),
    ("j.doe@example.com", "", "j.doe@example.com"),
    ("John.Doe <j.doe@example.com>", "John.Doe", "j.doe@example.com"),  # obsolete, common
    (
        "=?iso-8859-1?q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
        "André Pirard",
        "pirard@vm1.ulg.ac.be",
    ),
    ("Support Team: j.doe@example.com;", "", "j.doe@example.com"),  # a group of one
    ("Big Bug bb@Bug.com", "", "bb@bug.com"),  # no brackets, one address
    ("John <j.doe@example.com", "John", "j.doe@example.com"),  # a lost ">"
    ("<@relay.test:j.doe@example.com>", "", "j.doe@example.com"),  # a source route
    ("Jörg Müller <jörg@example.de>", "Jörg Müller", "jörg@example.de"),
]


@pytest.mark.parametrize(("value", "name", "address"), REAL_WORLD)
def test_real_world_from_shapes_give_one_sender(value, name, address) -> None:
    email = parse_email(f"From: {value}\r\nSubject: Hi\r\n\r\nHello\r\n".encode())

    assert (email.from_name, email.from_address, email.sender_problem) == (name, address, "")


@pytest.mark.parametrize("from_line", IMPERSONATIONS + [line for line, _ in AMBIGUOUS])
def test_parsing_an_attack_never_raises_and_never_names_the_victim(from_line) -> None:
    email = parse_email(raw_email(from_line))

    assert email.from_address in ("", "mallory@attacker.test")
