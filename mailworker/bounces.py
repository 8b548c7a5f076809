"""Reading a bounce: which email it is about, and what the remote server said.

A delivery status notification (RFC 3464) is a multipart/report; report-type=delivery-status:
a human-readable part, a message/delivery-status part (one block of fields for the message,
then one block per recipient: Final-Recipient, Action, Status, Diagnostic-Code), and the
original email (message/rfc822) or only its headers (text/rfc822-headers). The stdlib email
package parses message/delivery-status into header blocks, one sub-message each.

What is seen in practice besides the standard: Exchange and Exim name the failed recipients
in X-Failed-Recipients; mailer-daemons that write no report attach the original (message/
rfc822) or paste its headers into the text; some only keep In-Reply-To/References. All of
those are read here, leniently: this module never raises for what it is given.

A pure reader (no database): the pipeline's bounce filter decides what the ids mean.
"""

from __future__ import annotations

import contextlib
import email
import re
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32

MESSAGE_ID = re.compile(r"<[^<>\s]{1,998}>")
# "Message-ID: <...>" pasted into a bounce's text (the original's headers quoted inline).
QUOTED_MESSAGE_ID = re.compile(r"(?im)^\s*>?\s*message-id:\s*(<[^<>\s]{1,998}>)")
MAX_PARTS = 200  # a bounce is small; an email with more parts than this is read no further
MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a delivery-status report."""

    recipient: str
    action: str  # "failed", "delayed", "delivered", "relayed", "expanded" (lowercase), or ""
    status: str  # "5.1.1"
    diagnostic: str  # "smtp; 550 5.1.1 <jane@customer.test>: Recipient address rejected"

    @property
    def failed(self) -> bool:
        # No Action with a permanent (5.x.x) Status is a failure too (some MTAs omit Action).
        return self.action == "failed" or (not self.action and self.status.startswith("5"))

    @property
    def reason(self) -> str:
        """The remote server's own words: its Diagnostic-Code, else Status and Action."""
        diagnostic = self.diagnostic
        kind, sep, rest = diagnostic.partition(";")
        if sep and kind.strip().lower() in ("smtp", "x-unix", "x-postfix", "x-local"):
            diagnostic = rest
        diagnostic = " ".join(diagnostic.split())
        if diagnostic:
            return diagnostic[:MAX_REASON_CHARS]
        return (
            " ".join(part for part in (self.status, self.action and f"({self.action})") if part)
            or "delivery failed"
        )


@dataclass
class BounceReport:
    """What a bounce says: the ids of the original email it is about, and per recipient."""

    original_ids: list[str] = field(default_factory=list)  # the original's Message-ID first
    recipients: list[RecipientStatus] = field(default_factory=list)
    failed_addresses: list[str] = field(default_factory=list)  # X-Failed-Recipients
    text: str = ""  # the human-readable part, for a reason when no report says one

    @property
    def delayed_only(self) -> bool:
        """A warning that delivery is delayed (Action: delayed): not a bounce yet."""
        return bool(self.recipients) and all(r.action == "delayed" for r in self.recipients)

    def failures(self) -> list[RecipientStatus]:
        failed = [r for r in self.recipients if r.failed]
        if failed or self.recipients:
            return failed
        # No report: X-Failed-Recipients, with the reason the text gives.
        reason = text_reason(self.text)
        return [
            RecipientStatus(recipient=address, action="failed", status="", diagnostic=reason)
            for address in self.failed_addresses
        ] or [RecipientStatus(recipient="", action="failed", status="", diagnostic=reason)]


def read_bounce(raw: bytes) -> BounceReport:
    """The report of a bounce, read from its raw bytes."""
    try:
        message = email.message_from_bytes(raw, policy=compat32)
    except Exception:  # noqa: BLE001 - a bounce that does not parse says nothing
        return BounceReport()
    report = BounceReport()
    with contextlib.suppress(Exception):  # whatever was read so far is kept
        _read(message, report)
    report.original_ids = list(dict.fromkeys(report.original_ids))
    return report


def _read(message: Message, report: BounceReport) -> None:
    for value in message.get_all("X-Failed-Recipients") or []:
        report.failed_addresses += [a.strip() for a in str(value).split(",") if a.strip()]
    original_headers: list[Message] = []
    texts: list[str] = []
    for count, part in enumerate(message.walk()):
        if count > MAX_PARTS:
            break
        content_type = part.get_content_type()
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            report.recipients += _recipient_blocks(part)
        elif content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                original_headers.append(payload[0])
        elif content_type in ("text/rfc822-headers", "message/global-headers"):
            original_headers.append(email.message_from_string(_text_of(part), policy=compat32))
        elif content_type == "text/plain" and not part.get_filename():
            texts.append(_text_of(part))
    report.text = "\n".join(texts)
    for headers in original_headers:
        if value := headers.get("Message-ID"):
            report.original_ids += MESSAGE_ID.findall(str(value))
    # The original's headers pasted into the text (mailer-daemons without a report).
    for text in texts:
        report.original_ids += QUOTED_MESSAGE_ID.findall(text)
    # Last: what the bounce itself says it answers.
    for name in ("In-Reply-To", "References"):
        for value in message.get_all(name) or []:
            report.original_ids += MESSAGE_ID.findall(str(value))


def _recipient_blocks(part: Message) -> list[RecipientStatus]:
    """The per-recipient blocks of a message/delivery-status part (the first block is the
    message's own: Reporting-MTA, Arrival-Date; it names no recipient)."""
    payload = part.get_payload()
    blocks = payload if isinstance(payload, list) else []
    if not blocks and isinstance(payload, str):  # a part the parser left as text
        blocks = [
            email.message_from_string(chunk.strip() + "\n", policy=compat32)
            for chunk in re.split(r"\r?\n\s*\r?\n", payload)
            if chunk.strip()
        ]
    statuses = []
    for block in blocks:
        recipient = _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
        if not recipient and not _field(block, "Action"):
            continue
        _kind, _sep, address = recipient.rpartition(";")
        statuses.append(
            RecipientStatus(
                recipient=address.strip().strip("<>"),
                action=_field(block, "Action").lower(),
                status=_field(block, "Status"),
                diagnostic=_field(block, "Diagnostic-Code"),
            )
        )
    return statuses


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


# A line of a bounce's text that carries the remote server's answer: "550 5.1.1 ...",
# "Remote Server returned '550 ...'", "said: 550 ...".
SMTP_REPLY = re.compile(r"(?m)([45][0-9]{2}[ -](?:[45]\.[0-9]{1,3}\.[0-9]{1,3}\b)?.{3,400})$")


def text_reason(text: str) -> str:
    """The remote server's reply quoted in a bounce without a report, else a plain note."""
    match = SMTP_REPLY.search(text or "")
    if match:
        return " ".join(match.group(1).split()).strip("'\"")[:MAX_REASON_CHARS]
    return "delivery failed (the bounce names no reason)"
