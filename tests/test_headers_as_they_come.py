"""Headers as they really come (issue 13, part 4): broken folding and junk before the headers
no longer turn every header into body; Reply-To, Sender and Return-Path stand in for a From
without address; a From without a domain keeps its local part for the bounce filters; raw
8-bit GB2312 and Shift_JIS headers read as what they are; UTF-7 encoded words decoded.

Each shape is built here byte by byte (a composing library would repair it), delivered to a
real Dovecot mailbox and read by a pass. The defects are what parse_email notes for the same
bytes: the record shows them (Message.defects, stored by the pipeline)."""

from __future__ import annotations

from email.utils import make_msgid

import pytest

from integrations.models import EmailIntegration
from mailworker.parsing import parse_email
from mailworker.pipeline.passes import run_pass
from records.models import ProcessedEmail, Quarantine, ServiceRecord

pytestmark = pytest.mark.django_db

LONG_VALUE = "v=1; a=rsa-sha256; d=example.test; " + "Q" * 180


def raw(*header_lines: str | bytes, body: bytes = b"The printer on floor 3 is jammed.") -> bytes:
    """Header lines exactly as given (bytes kept as they are), CRLF, then the body."""
    lines = [line if isinstance(line, bytes) else line.encode() for line in header_lines]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body + b"\r\n"


def standard(*extra: str | bytes, sender: str = "From: Ann Lee <ann@customer.test>") -> list:
    return [
        sender,
        "To: support@desk.test",
        "Subject: Printer jammed",
        f"Message-ID: {make_msgid(domain='customer.test')}",
        "Date: Mon, 2 Mar 2026 10:00:00 +0000",
        *extra,
    ]


@pytest.fixture
def desk(dovecot, dovecot_integration):
    class Desk:
        integration: EmailIntegration = dovecot_integration(protocol="imap", encryption="ssl")

        def receive(self, message: bytes) -> list[str]:
            """Deliver, run a pass; the defects parse_email notes for these bytes."""
            dovecot.deliver(self.integration.incoming_username, [message])
            report = run_pass(integration=self.integration, batch_size=500)
            assert not report.failed, report.errors
            return parse_email(message).defects

    return Desk()


def the_record() -> ServiceRecord:
    record = ServiceRecord.objects.get()
    assert not Quarantine.objects.exists()
    return record


# Broken folding and junk before the headers -------------------------------------------------


def test_a_long_x_header_folded_without_white_space_keeps_every_header(desk) -> None:
    half = len(LONG_VALUE) // 2
    lines = standard()
    # The fold lost its leading space: the stdlib took it (and all after it) for body.
    lines[2:2] = [f"X-Long-Signature: {LONG_VALUE[:half]}", LONG_VALUE[half:]]

    defects = desk.receive(raw(*lines))

    record = the_record()
    assert record.requester.email == "ann@customer.test"
    assert record.title == "Printer jammed"
    message = record.messages.get()
    assert message.text_body.strip() == "The printer on floor 3 is jammed."
    assert any("joined to the header before them" in note for note in defects)
    assert parse_email(raw(*lines)).header("x-long-signature").replace(" ", "") == (
        LONG_VALUE.replace(" ", "")
    )


def test_a_broken_fold_of_the_last_header_before_the_blank_line(desk) -> None:
    lines = [*standard(), f"X-Long-Signature: {LONG_VALUE[:60]}", LONG_VALUE[60:].replace(" ", "")]

    defects = desk.receive(raw(*lines))

    record = the_record()
    assert (record.requester.email, record.title) == ("ann@customer.test", "Printer jammed")
    assert "floor 3" in record.messages.get().text_body
    assert "QQQQ" not in record.messages.get().text_body
    assert any("joined to the header before them" in note for note in defects)


@pytest.mark.parametrize(
    ("junk", "note"),
    [
        (b"garbage \x01 line", "garbage"),
        (b"", "1 line(s) before the headers skipped"),
        (b">From ann@customer.test Mon Mar  2 10:00:00 2026", ">From ann@customer.test"),
        (b"\xef\xbb\xbf", "byte order mark"),
    ],
    ids=["garbage", "blank", "quoted-mbox-from", "bom"],
)
def test_a_junk_line_before_the_headers_is_skipped(desk, junk, note) -> None:
    message = raw(*standard())
    message = junk + message if junk == b"\xef\xbb\xbf" else junk + b"\r\n" + message

    defects = desk.receive(message)

    record = the_record()
    assert (record.requester.email, record.title) == ("ann@customer.test", "Printer jammed")
    assert record.messages.get().text_body.strip() == "The printer on floor 3 is jammed."
    assert any(note in each for each in defects), defects


def test_an_mbox_from_line_and_a_quoted_one_before_the_headers(desk) -> None:
    message = (
        b"From ann@customer.test Mon Mar  2 10:00:00 2026\r\n"
        b">From ann@customer.test Mon Mar  2 09:59:00 2026\r\n" + raw(*standard())
    )

    defects = desk.receive(message)

    record = the_record()
    assert (record.requester.email, record.title) == ("ann@customer.test", "Printer jammed")
    assert any("2 line(s) before the headers skipped" in note for note in defects)


def test_a_body_without_its_blank_line_is_not_taken_for_a_header() -> None:
    # Prose after the headers with no blank line: the body, as before (no header follows).
    email = parse_email(
        b"From: ann@customer.test\r\nSubject: Printer\r\nIt is jammed again.\r\n\r\nAnn\r\n"
    )

    assert email.subject == "Printer"
    assert email.text_body.startswith("It is jammed again.")


def test_an_email_without_headers_stays_a_body() -> None:
    email = parse_email(b"Hello,\r\n\r\nTo: whom it may concern: help.\r\n")

    assert email.subject == "" and email.from_address == ""
    assert "Hello," in email.text_body
    assert not any("header repair" in note for note in email.defects)


# Sender fallbacks -------------------------------------------------------------------------------

FALLBACKS = [
    (
        ["Reply-To: Ann Lee <ann@customer.test>", "Sender: bot@relay.test"],
        "ann@customer.test",
        "Reply-To",
    ),
    (
        ["Sender: Ann Lee <ann@customer.test>", "Return-Path: <bounce@relay.test>"],
        "ann@customer.test",
        "Sender",
    ),
    (["Return-Path: <ann@customer.test>"], "ann@customer.test", "Return-Path"),
]


@pytest.mark.parametrize(("headers", "requester", "used"), FALLBACKS, ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("from_line", [None, "From:", "From: undisclosed-recipients:;"])
def test_a_from_without_address_falls_back_in_order(desk, headers, requester, used, from_line):
    lines = [line for line in standard(*headers) if not line.startswith("From:")]
    if from_line:
        lines.insert(0, from_line)

    defects = desk.receive(raw(*lines))

    record = the_record()
    assert record.requester.email == requester
    assert record.title == "Printer jammed"
    assert f"no usable From; used {used}" in defects
    assert parse_email(raw(*lines)).sender_fallback == used


def test_an_ambiguous_from_is_quarantined_whatever_reply_to_says(desk) -> None:
    lines = standard(
        "From: Mallory <mallory@attacker.test>",
        "Reply-To: ann@customer.test",
        sender="From: Ann <ann@customer.test>",
    )

    desk.receive(raw(*lines))

    entry = Quarantine.objects.get()
    assert entry.reason.startswith("sender is ambiguous")
    assert not ServiceRecord.objects.exists()


def test_a_reply_to_with_two_addresses_is_no_fallback() -> None:
    email = parse_email(
        raw("Reply-To: a@customer.test, b@customer.test", "Sender: <c@customer.test>")
    )

    assert email.from_address == "c@customer.test"
    assert email.sender_fallback == "Sender"


def test_a_mailer_daemon_without_domain_keeps_its_local_part(desk) -> None:
    lines = standard(
        "Return-Path: <>",
        sender="From: MAILER-DAEMON (Mail Delivery System)",
    )
    message = raw(*lines, body=b"This message was created automatically by mail delivery.")

    desk.receive(message)

    email = parse_email(message)
    assert email.from_address == ""  # never an identity: nobody can be answered there
    assert email.from_local_part == "mailer-daemon"
    # No record (no requester): a bounce of no email of ours, recognised by its local part.
    assert not ServiceRecord.objects.exists()
    logged = ProcessedEmail.objects.get()
    assert logged.outcome == ProcessedEmail.Outcome.IGNORED
    assert "sent by mailer-daemon" in logged.reason


# Raw 8-bit headers ------------------------------------------------------------------------------

EIGHT_BIT = [
    ("gb2312", "转发：会议通知 - 打印机故障", "张三", "打印机又坏了。"),
    ("shift_jis", "転送：会議のお知らせ プリンター故障", "山田太郎", "プリンターが壊れました。"),
]


@pytest.mark.parametrize(("charset", "subject", "name", "body"), EIGHT_BIT)
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_raw_8bit_subject_and_from_read_in_their_charset(
    desk, charset, subject, name, body, declared
) -> None:
    lines = [
        b"From: " + name.encode(charset) + b" <sender@example.cn>",
        b"To: support@desk.test",
        b"Subject: " + subject.encode(charset),
        f"Message-ID: {make_msgid(domain='example.cn')}".encode(),
        b"Date: Mon, 2 Mar 2026 10:00:00 +0800",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain" + (f"; charset={charset}".encode() if declared else b""),
        b"Content-Transfer-Encoding: 8bit",
    ]

    defects = desk.receive(raw(*lines, body=body.encode(charset)))

    record = the_record()
    assert record.title == subject
    assert record.requester.email == "sender@example.cn"
    assert record.requester.get_full_name() == name
    assert any(note.startswith("header: 8-bit header decoded as") for note in defects)
    if declared:
        assert body in record.messages.get().text_body


def test_utf8_headers_stay_utf8_beside_a_legacy_body_charset() -> None:
    email = parse_email(
        raw(
            "From: Zoë <zoe@customer.test>".encode(),
            "Subject: Café printer".encode(),
            b"Content-Type: text/plain; charset=iso-8859-1",
            body="Caf\xe9".encode("latin-1"),
        )
    )

    assert (email.from_name, email.subject) == ("Zoë", "Café printer")


# UTF-7 encoded words ----------------------------------------------------------------------------


def test_utf7_encoded_words_are_decoded(desk) -> None:
    lines = standard(
        sender="From: =?utf-7?Q?Andr+AOk-_Pirard?= <andre@customer.test>",
    )
    lines[2] = "Subject: =?UNICODE-1-1-UTF-7?Q?Caf+AOk-_printer?= =?utf-7?B?K0FPay0=?="

    defects = desk.receive(raw(*lines))

    record = the_record()
    assert record.title == "Café printeré"
    assert record.requester.email == "andre@customer.test"
    assert record.requester.get_full_name() == "André Pirard"
    assert not any("unknown charset" in note for note in defects)


# The repair's edges (parse_email alone) ----------------------------------------------------------


def test_a_fold_that_starts_with_a_url_is_still_a_fold() -> None:
    email = parse_email(
        raw(
            "From: ann@customer.test",
            "List-Unsubscribe: <https://lists.example.test/unsubscribe?id=",
            "https://lists.example.test/x>",
            "Subject: Printer",
        )
    )

    assert email.subject == "Printer"
    assert "https://lists.example.test/x>" in email.header("list-unsubscribe")


def test_white_space_before_the_colon_is_the_obsolete_syntax_not_body() -> None:
    email = parse_email(raw("From  : Ann <ann@customer.test>", "Subject     : Saying Hello"))

    assert (email.from_address, email.subject) == ("ann@customer.test", "Saying Hello")
    assert any("white space before the colon" in note for note in email.defects)


def test_an_envelope_from_line_inside_the_headers_is_not_joined_to_a_header() -> None:
    email = parse_email(
        raw(
            "Subject: Printer",
            "From ann@customer.test Mon Mar  2 10:00:00 2026",
            "From: ann@customer.test",
        )
    )

    assert (email.subject, email.from_address) == ("Printer", "ann@customer.test")


def test_a_well_formed_email_is_not_repaired() -> None:
    email = parse_email(raw(*standard()))

    assert not any("header repair" in note for note in email.defects)
