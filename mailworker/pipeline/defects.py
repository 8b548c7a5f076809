"""What the record says about an email the parser could not show whole: a readable line for
each limit that cut something ("3 attachments not shown: see the original"), then the
parser's own notes (InboundEmail.defects). Stored in Message.defects; the record page shows
them next to the message with its "Show original" link."""

from __future__ import annotations

import re

from mailworker.inbound import InboundEmail

ATTACHMENT_HEADER = re.compile(rb"^content-disposition:[ \t]*attachment", re.IGNORECASE | re.M)
PART_HEADER = re.compile(rb"^content-type:", re.IGNORECASE | re.MULTILINE)
# Parser notes that say a limit cut something off (mailworker/parsing.py).
CUT_MARKERS = ("cut to", "not read", "not kept", "time limit", "were not read", "kept empty")


def readable_defects(email: InboundEmail, raw: bytes) -> list[str]:
    if not email.defects:
        return []
    lines: list[str] = []
    for note in email.defects:
        if note.startswith("more than") and "MIME parts" in note:
            lines.append(_parts_not_shown(email, raw))
        elif "nested deeper" in note:
            lines.append("parts nested too deep are not shown: see the original")
        elif any(marker in note for marker in CUT_MARKERS):
            lines.append(f"{note}: see the original")
    return [*dict.fromkeys(lines), *email.defects]


def _parts_not_shown(email: InboundEmail, raw: bytes) -> str:
    """How many attachments the parts limit left out, counted in the raw bytes (only for
    an email that hit the limit: never on the hot path)."""
    missing = len(ATTACHMENT_HEADER.findall(raw)) - len(email.attachments)
    if missing > 0:
        noun = "attachment" if missing == 1 else "attachments"
        return f"{missing} {noun} not shown: see the original"
    parts = len(PART_HEADER.findall(raw))
    return f"some of the email's {parts} MIME parts are not shown: see the original"
