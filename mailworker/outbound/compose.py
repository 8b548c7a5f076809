"""Composing the emails the desk sends, from the integration's settings.

Every email about a record carries the record number in its subject, a Message-ID we
generate, sign with the record's number (message_ids.py) and store, and In-Reply-To/References
naming the record's earlier messages, so an answer threads back even when its subject was
edited. Automatic emails say so (Auto-Submitted, X-Auto-Response-Suppress) so auto-responders
stay quiet, and every email carries our loop header so the desk never takes its own mail for
a customer's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import charset as charsets
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr, parseaddr

from django.utils import timezone

from integrations.models import ContentType, EmailIntegration, TransferEncoding
from mailworker.headers import LOOP_HEADER
from mailworker.outbound.message_ids import sign_message_id, unsigned_message_id
from servicedesk.control_characters import (
    describe,
    first_control_character,
    without_control_characters,
)

LOOP_HEADER_VALUE = "servicedesk"
MAX_REFERENCES = 20  # RFC 5322 allows more; long chains only cost bytes
SUBJECT_TEMPLATE = "{subject} [#{number}]"


class HeaderInjectionError(ValueError):
    """A value meant for a header holds a line break or another control character: it could
    add headers of its own (compat32 breaks lines on \x0b, \x0c, \x1c-\x1e, U+2028...)."""


@dataclass(frozen=True)
class AttachedFile:
    """A file an agent attached to a reply, sent as a MIME part of its own."""

    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class ComposedEmail:
    message_id: str
    sender: str  # envelope sender
    recipients: list[str]
    raw: bytes


def header_safe(value: str, *, what: str) -> str:
    """The value, when it can go into a header as it is: every control character (Unicode's
    Cc, NUL and DEL among them) and the line and paragraph separators are refused, as the
    stdlib's writer would turn several of them into line breaks."""
    char = first_control_character(value)
    if char is None:
        return value
    kind = "a line break" if char in "\r\n" else "a control character"
    raise HeaderInjectionError(
        f"{what} contains {kind} ({describe(char)}), which headers cannot hold"
    )


def check_headers(*, to: list[str], subject: str, sender_name: str | None = None) -> None:
    """Refuse, before anything is queued, values that compose() would refuse later.
    `sender_name`: the integration's name, the display name of From (checked as typed: an
    encoded word would hide a control character from the check of the whole header)."""
    for address in to:
        header_safe(address, what="A recipient address")
    header_safe(subject, what="The subject")
    if sender_name is not None:
        header_safe(sender_name, what="The integration's name")


def record_subject(*, subject: str, number: int) -> str:
    """The record number in the subject, once: replies keep "[#123]" without doubling it."""
    # A record's title may hold what an email or an import brought: on one line, and no
    # control character, so that header_safe() never has to refuse a record's email.
    subject = " ".join(without_control_characters(subject).split())
    if f"#{number}" in subject:
        return subject
    return SUBJECT_TEMPLATE.format(subject=subject, number=number)


def new_message_id(integration: EmailIntegration | None, *, record_id: int | None = None) -> str:
    """Our Message-ID for a new email: signed with its record's number when it is about one
    (a reply naming it then threads there, see message_ids.py), else one that threads nowhere."""
    address = integration.email_address if integration else ""
    domain = address.rpartition("@")[2]
    if record_id is None:
        return unsigned_message_id(domain=domain)
    return sign_message_id(record_id=record_id, domain=domain)


# The stdlib's older email API (email.mime, policy compat32) writes the same RFC 5322/MIME
# as EmailMessage with policy SMTP, in a quarter of the time: the newer API parses every
# header it is given and refolds it on output, which made composing a chunk of emails cost
# more than sending it. What the newer API refuses by itself (line breaks in a header) is
# refused here by header_safe(), on every header.
POLICY = compat32.clone(linesep="\r\n")
BODY_ENCODINGS = {
    TransferEncoding.QUOTED_PRINTABLE: charsets.QP,
    TransferEncoding.BASE64: charsets.BASE64,
    TransferEncoding.EIGHT_BIT: None,  # 8bit, or 7bit when the text is ASCII
}
MIME_HEADERS = ("MIME-Version", "Content-Type", "Content-Transfer-Encoding")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _address(value: str) -> str:
    """An address for To/Cc, a display name outside ASCII encoded (RFC 2047): the header
    would otherwise be encoded whole, address included."""
    if value.isascii():
        return value
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if address else value


def _charset(integration: EmailIntegration, *texts: str) -> charsets.Charset:
    """The integration's charset and transfer encoding for the body; utf-8 when the
    configured charset cannot hold the text, so that no character is lost."""
    name = integration.outgoing_charset or "utf-8"
    try:
        for text in texts:
            text.encode(name)
        charset = charsets.Charset(name)
    except (UnicodeEncodeError, LookupError):
        charset = charsets.Charset("utf-8")
    charset.body_encoding = BODY_ENCODINGS.get(integration.outgoing_encoding, charsets.QP)
    return charset


def _part(part: MIMEBase) -> MIMEBase:
    # email.mime gives every part a MIME-Version; it belongs on the message only.
    del part["MIME-Version"]
    return part


def _body(*, integration: EmailIntegration, text: str, html: str) -> MIMEBase:
    """text/plain, or multipart/alternative with the HTML when the integration sends HTML."""
    with_html = bool(html) and integration.outgoing_content_type == ContentType.HTML
    charset = _charset(integration, text, html) if with_html else _charset(integration, text)
    plain = MIMEText(_ending_a_line(text), "plain", charset, policy=POLICY)
    if not with_html:
        return plain
    alternative = MIMEMultipart("alternative", policy=POLICY)
    alternative.attach(_part(plain))
    alternative.attach(_part(MIMEText(_ending_a_line(html), "html", charset, policy=POLICY)))
    return alternative


def _ending_a_line(text: str) -> str:
    """Lines that end in CRLF, the last one too (as EmailMessage.set_content wrote them):
    a text part is encoded in canonical form (RFC 2045), which base64 does not do itself."""
    text = LINE_BREAK.sub("\r\n", text)
    return text if text.endswith("\r\n") else text + "\r\n"


def _with_attachment(body: MIMEBase, attached_email: bytes) -> MIMEBase:
    # As a file, byte for byte: a message/rfc822 part would be re-serialised, and the
    # emails forwarded here are often the broken ones.
    attachment = MIMEApplication(attached_email, "octet-stream", policy=POLICY)
    attachment.add_header("Content-Disposition", "attachment", filename="original.eml")
    mixed = MIMEMultipart("mixed", policy=POLICY)
    mixed.attach(_part(body))
    mixed.attach(_part(attachment))
    return mixed


def _with_files(body: MIMEBase, files: list[AttachedFile]) -> MIMEBase:
    mixed = MIMEMultipart("mixed", policy=POLICY)
    mixed.attach(_part(body))
    for file in files:
        name = " ".join(without_control_characters(file.filename).split()) or "attachment.bin"
        maintype, _, subtype = file.content_type.partition("/")
        if not (maintype and subtype) or maintype in ("multipart", "message"):
            # A part that claims to contain parts would be parsed as such: send it as bytes.
            maintype, subtype = "application", "octet-stream"
        part = MIMEApplication(file.content, subtype, policy=POLICY)
        part.replace_header("Content-Type", f"{maintype}/{subtype}")
        part.add_header(
            "Content-Disposition",
            "attachment",
            filename=name if name.isascii() else ("utf-8", "", name),
        )
        mixed.attach(_part(part))
    return mixed


def _set_headers(message: MIMEBase, headers: list[tuple[str, str]]) -> None:
    """The headers, then the MIME ones email.mime wrote first: the usual order to read."""
    mime = [(name, message[name]) for name in MIME_HEADERS if name in message]
    for name, _value in mime:
        del message[name]
    for name, value in headers:
        message[name] = header_safe(value, what=name)
    for name, value in mime:
        message[name] = value


def compose(
    *,
    integration: EmailIntegration,
    to: list[str],
    subject: str,
    text: str,
    html: str = "",
    in_reply_to: str = "",
    references: list[str] | None = None,
    automatic: bool,
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    attached_email: bytes = b"",
    files: list[AttachedFile] | None = None,
    message_id: str = "",
) -> ComposedEmail:
    """Build one email ready for SMTP. Refuses values that would inject headers.
    `message_id`: the one given out when the email was queued; a new one when empty.
    `bcc`: envelope recipients only; no header names them (each would see the others)."""
    check_headers(
        to=[*to, *(cc or []), *(bcc or [])], subject=subject, sender_name=integration.name
    )
    message_id = message_id or new_message_id(integration)
    headers = [
        ("From", formataddr((integration.name, integration.email_address), charset="utf-8")),
        ("To", ", ".join(_address(address) for address in to)),
    ]
    if cc:
        headers.append(("Cc", ", ".join(_address(address) for address in cc)))
    headers += [
        ("Subject", subject),
        ("Date", format_datetime(timezone.now())),
        ("Message-ID", message_id),
    ]
    if in_reply_to:
        headers.append(("In-Reply-To", in_reply_to))
    refs = (references or [])[-MAX_REFERENCES:]
    if refs:
        headers.append(("References", " ".join(refs)))
    headers.append((LOOP_HEADER, LOOP_HEADER_VALUE))
    if automatic:
        headers += [("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All")]
    message = _body(integration=integration, text=text, html=html)
    if attached_email:
        message = _with_attachment(message, attached_email)
    if files:
        message = _with_files(message, files)
    _set_headers(message, headers)
    return ComposedEmail(
        message_id=message_id,
        sender=integration.email_address,
        recipients=[*to, *(cc or []), *(bcc or [])],
        raw=message.as_bytes(policy=POLICY),
    )
