"""parse_email turns any bytes into an InboundEmail: never raising, never slow, every text clean
for the database, and as true to the message as the message allows."""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import mailworker.parsing
from mailworker.inbound import InboundEmail, ParsedAttachment
from mailworker.parsing import parse_email, remove_emojis, sanitise_html

# Read in place, never copied (corpus/README.md): ../shared/corpus from the project root.
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
SECONDS_PER_CORPUS_FILE = 3.0
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _corpus_files() -> list[Any]:
    if not CORPUS.is_dir():
        reason = f"the e-mail corpus is absent here: {CORPUS}"
        return [pytest.param(None, id="corpus-absent", marks=pytest.mark.skip(reason=reason))]
    return [
        pytest.param(path, id=str(path.relative_to(CORPUS)))
        for path in sorted(CORPUS.rglob("*"))
        if path.is_file() and not path.name.startswith(("LICENSE", "README"))
    ]


def _corpus(relative: str) -> bytes:
    path = CORPUS / relative
    if not path.is_file():
        pytest.skip(f"the e-mail corpus is absent here: {path}")
    return path.read_bytes()


def _strings(value: object, where: str = "email") -> list[tuple[str, str]]:
    """Every string in a parsed email, with where it was found: fields, list items, header
    names and values, attachment filenames."""
    if isinstance(value, str):
        return [(where, value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found = []
        for field in dataclasses.fields(value):
            found += _strings(getattr(value, field.name), f"{where}.{field.name}")
        return found
    if isinstance(value, list):
        return [item for n, each in enumerate(value) for item in _strings(each, f"{where}[{n}]")]
    if isinstance(value, dict):
        found = []
        for key, each in value.items():
            found += _strings(key, f"{where} key") + _strings(each, f"{where}[{key!r}]")
        return found
    return []


def _message(*headers: str, body: bytes | str = "Hello\r\n") -> bytes:
    """A raw email from header lines and a body, with CRLF line ends as on the wire."""
    if isinstance(body, str):
        body = body.encode()
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body


# The real-world corpus ----------------------------------------------------------------------


@pytest.mark.parametrize("path", _corpus_files())
def test_every_corpus_email_parses_quickly_into_clean_text(path: Path) -> None:
    raw = path.read_bytes()

    started = time.perf_counter()
    email = parse_email(raw)
    elapsed = time.perf_counter() - started

    assert elapsed < SECONDS_PER_CORPUS_FILE, f"took {elapsed:.2f} s"
    assert email.raw_size == len(raw)
    for where, text in _strings(email):
        assert "\x00" not in text, f"NUL in {where}"
        assert not LONE_SURROGATE.search(text), f"lone surrogate in {where}"
    assert email.date is None or email.date.tzinfo is not None
    for address in [email.from_address, *email.to, *email.cc, *email.reply_to]:
        assert address == "" or ("@" in address and address == address.lower())
    for message_id in [email.message_id, *email.in_reply_to, *email.references]:
        assert message_id == "" or (message_id.startswith("<") and message_id.endswith(">"))
    assert all(len(value) <= 10_000 for values in email.headers.values() for value in values)
    assert "<script" not in email.html_body.lower()
    for attachment in email.attachments:
        assert attachment.filename and "/" not in attachment.filename
        assert "\\" not in attachment.filename and len(attachment.filename) <= 255


def test_a_210_kb_subject_is_cut_to_998_characters() -> None:
    email = parse_email(_corpus("flanker/long-header.eml"))

    assert email.subject.startswith("Die heiße Zypernsonne quälte Max und Victoria ja böse")
    assert len(email.subject) <= 998
    assert len(email.header("subject")) == 10_000
    assert "subject cut to 998 characters" in email.defects


def test_an_endless_chain_of_forwards_stays_one_eml_attachment() -> None:
    email = parse_email(_corpus("flanker/enclosed-endless.eml"))

    assert email.text_body == "Hello\n"
    assert [a.filename for a in email.attachments] == ["thanks.eml"]
    assert email.attachments[0].content_type == "message/rfc822"
    assert len(email.attachments[0].content) > 2_000_000


def test_an_unquoted_attachment_name_with_spaces_is_read_whole() -> None:
    email = parse_email(
        _corpus("mikel-mail/emails/attachment_emails/attachment_with_unquoted_name.eml")
    )

    assert [a.filename for a in email.attachments] == ["This is a test.txt"]


# Headers that break the stdlib ---------------------------------------------------------------


def test_a_group_address_in_to_does_not_cost_the_sender() -> None:
    email = parse_email(
        _message(
            "From: Bob Smith <Bob@Example.COM>",
            "To: unlisted-recipients:; (no To-header on input)",
            "Cc: Carol <carol@example.com>",
            "Subject: Printer",
        )
    )

    assert email.from_address == "bob@example.com"
    assert email.from_name == "Bob Smith"
    assert email.to == []
    assert email.cc == ["carol@example.com"]
    assert email.text_body == "Hello\n"


def test_raw_utf8_headers_are_decoded() -> None:
    raw = (
        "From: Jörg Müller <jörg@example.de>\r\n"
        "To: support@example.com\r\n"
        "Subject: Grüße aus Köln\r\n\r\nHallo\r\n"
    ).encode()

    email = parse_email(raw)

    assert email.subject == "Grüße aus Köln"
    assert email.from_name == "Jörg Müller"
    assert email.from_address == "jörg@example.de"


def test_raw_latin1_headers_are_decoded_not_mangled() -> None:
    raw = b"From: J\xf6rg <jorg@example.de>\r\nSubject: Gr\xfc\xdfe\r\n\r\nHallo\r\n"

    email = parse_email(raw)

    assert email.subject == "Grüße"
    assert email.from_name == "Jörg"


@pytest.mark.parametrize(
    ("header", "subject"),
    [
        ("=?utf-8?q?Caf=C3=A9?= =?utf-8?b?4piV?=", "Café☕"),
        (
            "Re: =?iso-8859-1?q?Gr=FC=DFe?= from\r\n =?ISO-8859-1?B?S/ZsbiE=?=",
            "Re: Grüße from Köln!",
        ),
        ("=?utf-8?q?=C3?= =?utf-8?q?=A9t=C3=A9?=", "été"),  # one character split over two words
        ("=?uft-8?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),  # a misspelt charset
        ("=?x-unknown?b?R3LDvMOfZQ==?=", "Grüße"),
        ("Printer\r\n   broken\tagain", "Printer broken again"),
    ],
)
def test_subjects_are_decoded_and_on_one_line(header: str, subject: str) -> None:
    email = parse_email(_message("From: a@example.com", f"Subject: {header}"))

    assert email.subject == subject


def test_missing_from_subject_and_date_are_noted_not_fatal() -> None:
    email = parse_email(_message("To: support@example.com", body="Just a body\r\n"))

    assert (email.from_address, email.from_name, email.subject, email.date) == ("", "", "", None)
    assert email.text_body == "Just a body\n"
    assert "no usable From address" in email.defects
    assert "no Date header" in email.defects


def test_sender_stands_in_for_a_missing_from() -> None:
    email = parse_email(_message("Sender: Helpdesk Robot <robot@example.com>"))

    assert (email.from_address, email.from_name) == ("robot@example.com", "Helpdesk Robot")
    assert "no usable From; used Sender" in email.defects


def test_a_from_without_angle_brackets_still_yields_its_address() -> None:
    email = parse_email(_message("From: Big Bug bb@Bug.com"))

    assert email.from_address == "bb@bug.com"


def test_dates_are_aware_and_unreadable_dates_are_noted() -> None:
    zoned = parse_email(_message("From: a@example.com", "Date: Tue, 07 May 2013 23:11:57 +0200"))
    unknown_zone = parse_email(_message("From: a@example.com", "Date: 7 May 2013 23:11:57 -0000"))
    garbage = parse_email(_message("From: a@example.com", "Date: <HR>"))

    assert zoned.date == datetime(2013, 5, 7, 23, 11, 57, tzinfo=timezone(timedelta(hours=2)))
    assert unknown_zone.date == datetime(2013, 5, 7, 23, 11, 57, tzinfo=UTC)
    assert garbage.date is None
    assert "Date unreadable: '<HR>'" in garbage.defects


def test_message_ids_keep_or_gain_their_angle_brackets() -> None:
    email = parse_email(
        _message(
            "From: a@example.com",
            "Message-ID: abc.123@mail.example.com",
            "In-Reply-To: <parent@example.com> (Bob's message of Monday)",
            "References: <root@example.com>\r\n <parent@example.com> <parent@example.com>",
        )
    )

    assert email.message_id == "<abc.123@mail.example.com>"
    assert email.in_reply_to == ["<parent@example.com>"]
    assert email.references == ["<root@example.com>", "<parent@example.com>"]


def test_addresses_are_lowercased_addr_specs() -> None:
    email = parse_email(
        _message(
            'From: "Doe, Jane" <Jane.Doe@Example.com>',
            "Reply-To: =?utf-8?q?J=C3=B6rg?= <JOERG@example.de>",
            "To: support@example.com, Second <Second@Example.com>",
            "Delivered-To: Desk@Example.com",
            "X-Original-To: support@example.com",
        )
    )

    assert (email.from_address, email.from_name) == ("jane.doe@example.com", "Doe, Jane")
    assert email.reply_to == ["joerg@example.de"]
    assert email.to == ["support@example.com", "second@example.com"]
    assert email.delivered_to == ["desk@example.com", "support@example.com"]


def test_headers_are_kept_decoded_under_lowercased_names() -> None:
    email = parse_email(
        _message(
            "From: a@example.com",
            "Auto-Submitted: auto-replied",
            "X-Note: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
            "Received: from a",
            "Received: from b",
            "X-Huge: " + "x" * 50_000,
        )
    )

    assert email.header("Auto-Submitted") == "auto-replied"
    assert email.headers["x-note"] == ["Grüße"]
    assert email.headers["received"] == ["from a", "from b"]
    assert len(email.header("x-huge")) == 10_000
    assert "header 'x-huge' cut to 10000 characters" in email.defects


# What databases refuse ----------------------------------------------------------------------


def test_nul_characters_are_removed_everywhere() -> None:
    raw = b"From: a@example.com\r\nSubject: Dis\x00k full\r\n\r\nbefore\x00after\r\n"

    email = parse_email(raw)

    assert email.subject == "Disk full"
    assert email.text_body == "beforeafter\n"
    assert all("\x00" not in text for _, text in _strings(email))


def test_a_lone_surrogate_in_a_display_name_is_removed() -> None:
    # \xed\xa0\x80 is U+D800 as Java and JavaScript write it (CESU-8): half an emoji.
    raw = b'From: "Bob \xed\xa0\x80 Smith" <bob@example.com>\r\n\r\nHi\r\n'

    email = parse_email(raw)

    assert email.from_name == "Bob Smith"
    assert email.from_address == "bob@example.com"


def test_a_surrogate_pair_written_as_cesu8_becomes_its_character() -> None:
    raw = b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    raw += b"smile \xed\xa0\xbd\xed\xb8\x80\r\n"

    assert parse_email(raw).text_body == "smile 😀\n"


# Charsets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["uft-8", "x-unknown", "UTF8", '"utf-8"'])
def test_utf8_text_under_a_wrong_or_unknown_label_is_read_as_utf8(charset: str) -> None:
    raw = _message(
        "From: a@example.com",
        f"Content-Type: text/plain; charset={charset}",
        body="Grüße, café ☕\r\n".encode(),
    )

    assert parse_email(raw).text_body == "Grüße, café ☕\n"


def test_a_fallback_decoding_is_noted() -> None:
    raw = _message(
        "From: a@example.com",
        "Content-Type: text/plain; charset=x-unknown",
        body="café\r\n".encode(),
    )

    assert "text/plain: unknown charset 'x-unknown'; decoded as utf-8" in parse_email(raw).defects


def test_windows_1252_text_labelled_utf8_decodes_to_the_right_characters() -> None:
    raw = _message(
        "From: a@example.com",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        body=b"caf\xe9 \x80 5\r\n",
    )

    email = parse_email(raw)

    assert email.text_body == "café € 5\n"
    assert "text/plain: utf-8 text was not UTF-8; decoded as windows-1252" in email.defects


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("iso-8859-1", "Grüße € 5"),  # senders mean windows-1252 by it
        ("gb2312", "打印机坏了"),  # senders mean GBK and more by it
        ("ks_c_5601-1987", "프린터가 고장났어요"),
        ("koi8-r", "Принтер сломан"),
    ],
)
def test_declared_legacy_charsets_decode_as_their_senders_meant(charset: str, text: str) -> None:
    encoded = text.encode({"iso-8859-1": "cp1252", "gb2312": "gb18030"}.get(charset, charset))
    raw = _message(
        "From: a@example.com",
        f"Content-Type: text/plain; charset={charset}",
        "Content-Transfer-Encoding: base64",
        body=base64.encodebytes(encoded),
    )

    assert parse_email(raw).text_body == text


def test_utf8_text_labelled_iso_8859_1_is_not_turned_into_mojibake() -> None:
    raw = _message(
        "From: a@example.com",
        "Content-Type: text/plain; charset=iso-8859-1",
        body="Grüße\r\n".encode(),
    )

    assert parse_email(raw).text_body == "Grüße\n"


# Bodies ---------------------------------------------------------------------------------------


def test_multipart_alternative_prefers_the_plain_part_and_keeps_the_html() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content("Plain words\n")
    message.add_alternative("<p>Rich <b>words</b></p>", subtype="html")

    email = parse_email(message.as_bytes())

    assert email.text_body == "Plain words\n"
    assert email.html_body == "<p>Rich <b>words</b></p>\n"
    assert email.attachments == []


def test_a_multipart_without_boundary_still_gives_a_body() -> None:
    raw = _message(
        "From: a@example.com", "Content-Type: multipart/mixed", body="The printer is on fire\r\n"
    )

    email = parse_email(raw)

    assert email.text_body == "The printer is on fire\n"
    assert "multipart/mixed without usable boundary: body kept as text" in email.defects


def test_an_unquoted_boundary_with_an_equals_sign_is_found() -> None:
    boundary = "----=_NextPart_000_0093_01C81419.EB75E850"
    raw = _message(
        "From: a@example.com",
        f"Content-Type: multipart/alternative; boundary={boundary}",
        body=(
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nplain body\r\n"
            f"--{boundary}\r\nContent-Type: text/html\r\n\r\n<p>html body</p>\r\n"
            f"--{boundary}--\r\n"
        ),
    )

    email = parse_email(raw)

    # The line break before a boundary belongs to the boundary (RFC 2046).
    assert email.text_body == "plain body"
    assert email.html_body == "<p>html body</p>"


def test_an_html_only_email_gets_a_text_body() -> None:
    html = (
        "<html><head><title>Newsletter</title><style>p {color: red}</style></head><body>"
        "<p>Hello <b>there</b>,</p><p>the printer on floor&nbsp;3 is broken:</p>"
        "<ul><li>paper jam</li><li>toner <a href='https://example.com/t'>empty</a></li></ul>"
        "Thanks<br>Anna<script>alert(1)</script></body></html>"
    )
    raw = _message("From: a@example.com", "Content-Type: text/html; charset=utf-8", body=html)

    email = parse_email(raw)

    assert email.text_body == (
        "Hello there,\n\nthe printer on floor 3 is broken:\n\n- paper jam\n- toner empty\n\n"
        "Thanks\nAnna"
    )


def test_html_is_sanitised_but_cid_images_stay() -> None:
    html = (
        '<p onclick="steal()">Hi</p><script>alert(1)</script>'
        '<a href="javascript:alert(1)">click</a> <a href="https://example.com/x">site</a>'
        '<img src="http://tracker.example.com/pixel.gif"><img src="cid:logo@example.com">'
        '<span style="color: red; background: url(http://tracker.example.com/bg)">red</span>'
    )

    clean = sanitise_html(html)

    assert "onclick" not in clean and "steal" not in clean
    assert "<script" not in clean and "alert" not in clean
    assert "javascript:" not in clean
    assert "tracker.example.com" not in clean
    assert '<img src="cid:logo@example.com">' in clean
    assert (
        '<a href="https://example.com/x" target="_blank" rel="noopener noreferrer">site</a>'
        in clean
    )


def test_the_html_body_is_stored_sanitised() -> None:
    raw = _message(
        "From: a@example.com",
        "Content-Type: text/html",
        body='<p>Hi</p><img src="https://tracker.example.com/p.gif" onerror="x()">',
    )

    assert parse_email(raw).html_body == "<p>Hi</p><img>"


# Attachments ----------------------------------------------------------------------------------


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def test_a_pdf_attachment_keeps_its_exact_bytes() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content("See attached.\n")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")

    email = parse_email(message.as_bytes())

    assert email.text_body == "See attached.\n"
    assert email.attachments == [
        ParsedAttachment(filename="report.pdf", content_type="application/pdf", content=PDF)
    ]


def test_an_inline_image_is_an_attachment_with_its_content_id() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content("Logo below\n")
    message.add_alternative('<p>Logo: <img src="cid:logo@example.com"></p>', subtype="html")
    message.get_payload()[1].add_related(
        PNG, maintype="image", subtype="png", cid="<logo@example.com>", filename="logo.png"
    )

    email = parse_email(message.as_bytes())

    assert email.attachments == [
        ParsedAttachment(
            filename="logo.png",
            content_type="image/png",
            content=PNG,
            content_id="logo@example.com",
            is_inline=True,
        )
    ]
    assert '<img src="cid:logo@example.com">' in email.html_body


def test_winmail_dat_is_kept_as_a_file() -> None:
    tnef = b"\x78\x9f\x3e\x22" + bytes(100)
    boundary = "b1"
    raw = _message(
        "From: outlook@example.com",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        body=(
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nSee attached\r\n"
            f"--{boundary}\r\nContent-Type: application/ms-tnef\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(tnef).decode()
            + f"--{boundary}--\r\n"
        ),
    )

    email = parse_email(raw)

    assert email.attachments == [
        ParsedAttachment(filename="winmail.dat", content_type="application/ms-tnef", content=tnef)
    ]


def test_a_forwarded_email_is_kept_as_an_eml_attachment() -> None:
    forwarded = EmailMessage()
    forwarded["From"] = "customer@example.com"
    forwarded["Subject"] = "Printer on fire"
    forwarded.set_content("Help!\n")
    message = EmailMessage()
    message["From"] = "agent@example.com"
    message["Subject"] = "Fwd: Printer on fire"
    message.set_content("Look at this.\n")
    message.add_attachment(forwarded)
    untitled = EmailMessage()
    untitled.set_content("No subject here\n")
    message.add_attachment(untitled)

    email = parse_email(message.as_bytes())

    assert [(a.filename, a.content_type) for a in email.attachments] == [
        ("Printer on fire.eml", "message/rfc822"),
        ("forwarded-message.eml", "message/rfc822"),
    ]
    inner = parse_email(email.attachments[0].content)
    assert (inner.from_address, inner.subject, inner.text_body) == (
        "customer@example.com",
        "Printer on fire",
        "Help!\n",
    )


@pytest.mark.parametrize(
    ("disposition", "filename"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\Users\\ann\\evil.exe"', "evil.exe"),
        ("attachment; filename*=utf-8''%E6%97%A5%E6%9C%AC.txt", "日本.txt"),
        ('attachment; filename="=?utf-8?B?w6l0w6kucGRm?="', "été.pdf"),
        ('attachment; filename="gnp\u202e.exe"', "gnp.exe"),
        ("attachment", "attachment-1.bin"),
        ('attachment; filename=".."', "attachment-1.bin"),
    ],
)
def test_attachment_names_are_decoded_and_safe(disposition: str, filename: str) -> None:
    raw = _message(
        "From: a@example.com",
        'Content-Type: multipart/mixed; boundary="b"',
        body=(
            "--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
            f"--b\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: {disposition}\r\n\r\ndata\r\n--b--\r\n"
        ).encode(),
    )

    email = parse_email(raw)

    assert [a.filename for a in email.attachments] == [filename]
    assert email.attachments[0].content == b"data"


def test_a_delivery_report_keeps_its_type_and_parts() -> None:
    raw = _message(
        "From: MAILER-DAEMON@example.com",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="r"',
        body=(
            "--r\r\nContent-Type: text/plain\r\n\r\nYour mail could not be delivered.\r\n"
            "--r\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.com\r\n\r\n"
            "Final-Recipient: rfc822; gone@example.com\r\nStatus: 5.1.1\r\n"
            "--r--\r\n"
        ),
    )

    email = parse_email(raw)

    assert (email.content_type, email.report_type) == ("multipart/report", "delivery-status")
    assert email.text_body == "Your mail could not be delivered."
    assert [(a.filename, a.content_type) for a in email.attachments] == [
        ("attachment-1.txt", "message/delivery-status")
    ]
    assert b"Status: 5.1.1" in email.attachments[0].content


# Bounds ---------------------------------------------------------------------------------------


def _nested_multiparts(depth: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % n for n in reversed(range(depth)))
    return b"From: a@example.com\r\nSubject: bomb\r\n" + opening + b"\r\ndeep\r\n" + closing


def test_a_nesting_bomb_returns_within_a_second_with_a_defect() -> None:
    started = time.perf_counter()
    email = parse_email(_nested_multiparts(100))

    assert time.perf_counter() - started < 1.0
    assert email.subject == "bomb"
    assert "MIME parts nested deeper than 20 were not read" in email.defects


def test_deeply_nested_html_is_sanitised_quickly() -> None:
    # html5ever, under nh3, is quadratic in the nesting of block containers.
    html = "<div>" * 50_000 + "help" + "</div>" * 50_000
    raw = _message("From: a@example.com", "Content-Type: text/html", body=html)

    started = time.perf_counter()
    email = parse_email(raw)

    assert time.perf_counter() - started < 1.0
    assert email.text_body == "help"
    assert email.html_body.count("<div>") == 200


def test_the_time_limit_stops_reading_parts_but_keeps_the_headers() -> None:
    email = parse_email(_message("From: a@example.com", "Subject: slow"), time_limit=0)

    assert email.subject == "slow"
    assert email.text_body == ""
    assert "time limit: stopped reading MIME parts" in email.defects


def test_a_failing_step_is_noted_and_the_rest_still_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(mailworker.parsing, "_read_date", broken)

    email = parse_email(_message("From: a@example.com", "Subject: still here", "Date: x"))

    assert (email.from_address, email.subject, email.text_body) == (
        "a@example.com",
        "still here",
        "Hello\n",
    )
    assert "date unreadable: RuntimeError: boom" in email.defects


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff\xfe", b"\r\n\r\n", b"From:\r\n\r\n", b"Content-Type: multipart/\r\n\r\n--"],
)
def test_garbage_is_an_email_too(raw: bytes) -> None:
    email = parse_email(raw)

    assert isinstance(email, InboundEmail)
    assert email.raw_size == len(raw)
    assert all("\x00" not in text for _, text in _strings(email))


# Emoji ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Printer 🔥🔥 broken 👍🏽 again 🇩🇪", "Printer broken again"),
        ("🚨 Outage\nThanks 🙏 a lot\n  indented 👀", "Outage\nThanks a lot\n  indented"),
        ("family 👨‍👩‍👧 keycap 1️⃣ end", "family keycap end"),
        ("no emoji here,  two spaces kept", "no emoji here,  two spaces kept"),
    ],
)
def test_remove_emojis_leaves_clean_spacing(text: str, expected: str) -> None:
    assert remove_emojis(text) == expected
