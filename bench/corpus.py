"""The emails the bench imports: a realistic mix, and large ones for the memory row.

Built with the standard library's EmailMessage, CRLF line endings as mail travels. Every
email differs in sender, subject and body, so the duplicate guard lets each one through.
"""

from __future__ import annotations

import bisect
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

SENDERS = 300  # distinct end users: some senders are new, most come back
REPLY_LAG = 100  # emails between a record's first email and a reply to it (a chunk at most)
# A 1x1 PNG: an inline image is small in real signatures too.
PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
TEXT = (
    "Hello,\n\nsince this morning the printer on floor {floor} prints only blank pages. "
    "We tried another tray and restarted it twice. Ticket reference {n}.\n\n"
    "Kind regards,\n{name}\n"
)


def _base(n: int, *, subject: str, sender: int | None = None) -> EmailMessage:
    sender = n % SENDERS if sender is None else sender
    message = EmailMessage()
    message["From"] = f"User {sender} <user{sender}@customer.test>"
    message["To"] = "support@desk.test"
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime(2026, 11, 20, 9, 30, tzinfo=UTC))
    message["Message-ID"] = make_msgid(idstring=f"bench{n}", domain="customer.test")
    return message


def plain_email(n: int) -> EmailMessage:
    message = _base(n, subject=f"Printer problem {n}")
    message.set_content(TEXT.format(floor=n % 9, n=n, name=f"User {n % SENDERS}"))
    return message


def html_email(n: int) -> EmailMessage:
    message = _base(n, subject=f"Screen flickers {n}")
    text = TEXT.format(floor=n % 9, n=n, name=f"User {n % SENDERS}")
    message.set_content(text)
    paragraphs = "".join(f"<p>{line}</p>" for line in text.splitlines() if line)
    message.add_alternative(
        f'<html><body>{paragraphs}<p><img src="cid:logo{n}@customer.test"></p></body></html>',
        subtype="html",
    )
    message.get_payload()[1].add_related(
        PIXEL_PNG, maintype="image", subtype="png", cid=f"<logo{n}@customer.test>"
    )
    return message


def attachment_email(n: int, *, size: int = 100 * 1024, content: bytes | None = None) -> bytes:
    message = _base(n, subject=f"Log file attached {n}")
    message.set_content(TEXT.format(floor=n % 9, n=n, name=f"User {n % SENDERS}"))
    data = content if content is not None else random.Random(n).randbytes(size)
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename="log.bin")
    return message.as_bytes(policy=SMTP)


def reply_email(n: int, *, record_number: int, sender: int) -> EmailMessage:
    """A reply by the record's requester (anyone else's "#N" would open a record of its own)."""
    message = _base(n, subject=f"Re: Printer problem #{record_number}", sender=sender)
    message.set_content(f"Still broken, see #{record_number}. Reply {n}.\n")
    return message


def mixed_mailbox(count: int, *, seed: int = 7) -> list[bytes]:
    """60% plain text, 20% HTML with an inline image, 10% with a 100 KB attachment, 10%
    replies naming "#number" of a record an email at least REPLY_LAG places earlier opened
    (records are numbered from 1 in the bench's fresh database, in the order they are
    created). A reply follows the acknowledgement its requester read, which is sent once the
    record's chunk has committed: a reply into the same chunk as its record's first email
    does not happen, and the desk writes a chunk's new records together at its end."""
    chooser = random.Random(seed)
    kinds = ["plain"] * 6 + ["html"] * 2 + ["attachment", "reply"]
    raws: list[bytes] = []
    requesters: list[int] = []  # the sender of each record, by record number - 1
    opened_at: list[int] = []  # the place in the list of each record's first email
    for n in range(count):
        repliable = bisect.bisect_right(opened_at, n - REPLY_LAG)  # records 1..repliable
        kind = chooser.choice(kinds) if repliable else "plain"
        if kind == "reply":
            number = chooser.randint(1, repliable)
            reply = reply_email(n, record_number=number, sender=requesters[number - 1])
            raws.append(reply.as_bytes(policy=SMTP))
            continue
        requesters.append(n % SENDERS)
        opened_at.append(n)
        if kind == "plain":
            raws.append(plain_email(n).as_bytes(policy=SMTP))
        elif kind == "html":
            raws.append(html_email(n).as_bytes(policy=SMTP))
        else:
            raws.append(attachment_email(n))
    return raws


def large_emails(count: int, *, attachment_bytes: int, first: int = 0) -> Iterator[bytes]:
    """Emails with one attachment of `attachment_bytes` each (random, so incompressible),
    made one at a time: the bench itself must not hold gigabytes. Encoded once; each email
    differs in its Message-ID and subject (so each has its own processed marker)."""
    token = b"BENCH-LARGE-TOKEN"
    template = attachment_email(first, content=os.urandom(attachment_bytes))
    template = template.replace(f"Log file attached {first}".encode(), b"Large " + token, 1)
    template = template.replace(f"bench{first}.".encode(), token + b".", 1)
    for n in range(first, first + count):
        yield template.replace(token, b"%d" % n, 2)
