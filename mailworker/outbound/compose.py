"""Composing the emails the desk sends, from the integration's settings.

Every email about a record carries the record number in its subject, a Message-ID we
generate and store, and In-Reply-To/References naming the record's earlier messages, so an
answer threads back even when its subject was edited. Automatic emails say so
(Auto-Submitted, X-Auto-Response-Suppress) so auto-responders stay quiet, and every email
carries our loop header so the desk never takes its own mail for a customer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from django.utils import timezone

from integrations.models import ContentType, EmailIntegration, TransferEncoding
from mailworker.headers import LOOP_HEADER

LOOP_HEADER_VALUE = "servicedesk"
MAX_REFERENCES = 20  # RFC 5322 allows more; long chains only cost bytes
SUBJECT_TEMPLATE = "{subject} [#{number}]"


class HeaderInjectionError(ValueError):
    """A value meant for a header holds a line break: it could add headers of its own."""


@dataclass(frozen=True)
class ComposedEmail:
    message_id: str
    sender: str  # envelope sender
    recipients: list[str]
    raw: bytes


def header_safe(value: str, *, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise HeaderInjectionError(f"{what} contains a line break, which headers cannot hold")
    return value


def check_headers(*, to: list[str], subject: str) -> None:
    """Refuse, before anything is queued, values that compose() would refuse later."""
    for address in to:
        header_safe(address, what="A recipient address")
    header_safe(subject, what="The subject")


def record_subject(*, subject: str, number: int) -> str:
    """The record number in the subject, once: replies keep "[#123]" without doubling it."""
    subject = " ".join(subject.split())
    if f"#{number}" in subject:
        return subject
    return SUBJECT_TEMPLATE.format(subject=subject, number=number)


def new_message_id(integration: EmailIntegration | None) -> str:
    address = integration.email_address if integration else ""
    domain = address.rpartition("@")[2] or "servicedesk.invalid"
    return make_msgid(domain=domain)


def _from_header(integration: EmailIntegration) -> Address:
    username, _, domain = integration.email_address.partition("@")
    return Address(display_name=integration.name, username=username, domain=domain)


def _set_body(
    message: EmailMessage, *, integration: EmailIntegration, text: str, html: str
) -> None:
    charset = integration.outgoing_charset or "utf-8"
    encoding = integration.outgoing_encoding
    cte = {
        TransferEncoding.QUOTED_PRINTABLE: "quoted-printable",
        TransferEncoding.BASE64: "base64",
        TransferEncoding.EIGHT_BIT: "8bit",
    }.get(encoding, "quoted-printable")
    try:
        text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        charset = "utf-8"  # never lose characters the configured charset cannot hold
    message.set_content(text, charset=charset, cte=cte)
    if html and integration.outgoing_content_type == ContentType.HTML:
        message.add_alternative(html, subtype="html", charset=charset, cte=cte)


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
    attached_email: bytes = b"",
    message_id: str = "",
) -> ComposedEmail:
    """Build one email ready for SMTP. Refuses values that would inject headers.
    `message_id`: the one given out when the email was queued; a new one when empty."""
    check_headers(to=[*to, *(cc or [])], subject=subject)
    message = EmailMessage(policy=SMTP)
    message_id = message_id or new_message_id(integration)
    message["From"] = _from_header(integration)
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = format_datetime(timezone.now())
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = header_safe(in_reply_to, what="In-Reply-To")
    refs = [header_safe(ref, what="References") for ref in (references or [])][-MAX_REFERENCES:]
    if refs:
        message["References"] = " ".join(refs)
    message[LOOP_HEADER] = LOOP_HEADER_VALUE
    if automatic:
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
    _set_body(message, integration=integration, text=text, html=html)
    if attached_email:
        # As a file, byte for byte: a message/rfc822 part would be re-serialised, and the
        # emails forwarded here are often the broken ones.
        message.add_attachment(
            attached_email, maintype="application", subtype="octet-stream", filename="original.eml"
        )
    return ComposedEmail(
        message_id=message_id,
        sender=integration.email_address,
        recipients=[*to, *(cc or [])],
        raw=message.as_bytes(policy=SMTP),
    )
