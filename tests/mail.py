"""Building raw emails for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid


def make_email(
    *,
    sender: str = "Jane Doe <jane@customer.test>",
    to: str = "support@desk.test",
    subject: str = "Printer on floor 3 is broken",
    body: str = "It prints only blank pages since this morning.",
    html: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
    message_id: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime(2026, 11, 20, 9, 30, tzinfo=UTC))
    message["Message-ID"] = message_id or make_msgid(domain="customer.test")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, content_type, content in attachments or []:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    # CRLF line endings, as mail travels and as IMAP servers hand it back.
    return message.as_bytes(policy=SMTP)
