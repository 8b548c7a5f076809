"""InboundEmail: what the pipeline knows about one received email, parsed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str = ""  # without angle brackets; set for inline parts referenced as cid:
    is_inline: bool = False


@dataclass
class InboundEmail:
    """A parsed email. Every text field is clean for any database: no NUL characters, no
    lone surrogates, HTML already sanitised."""

    raw_size: int
    message_id: str = ""  # with angle brackets, as in the header; "" when missing
    in_reply_to: list[str] = field(default_factory=list)  # Message-IDs, with brackets
    references: list[str] = field(default_factory=list)
    from_address: str = ""  # lowercased addr-spec, "" when missing or unreadable
    from_name: str = ""
    # The header that stood in for a From without an address ("Reply-To", "Sender" or
    # "Return-Path"); "" when From named the sender. Noted in `defects` too.
    sender_fallback: str = ""
    # The local part of a From without a domain, lowercased ("mailer-daemon" for `From:
    # MAILER-DAEMON (Mail Delivery System)`), for recognising bounces. Never an identity:
    # from_address stays "" (it opens records and names users, so it is a real address).
    from_local_part: str = ""
    # Why the sender is ambiguous (two From addresses, an unreadable From...): the sender
    # identity filter quarantines the email with it. "" when From names one sender or none.
    sender_problem: str = ""
    reply_to: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)  # addr-specs
    cc: list[str] = field(default_factory=list)
    delivered_to: list[str] = field(default_factory=list)  # Delivered-To, X-Original-To
    subject: str = ""
    date: datetime | None = None  # aware
    text_body: str = ""
    html_body: str = ""  # sanitised with nh3
    attachments: list[ParsedAttachment] = field(default_factory=list)
    # Lowercased header name -> every value, decoded to str: for the auto-reply filters.
    headers: dict[str, list[str]] = field(default_factory=dict)
    content_type: str = ""  # of the top-level part, e.g. "multipart/report"
    report_type: str = ""  # multipart/report's report-type parameter, e.g. "delivery-status"
    defects: list[str] = field(default_factory=list)  # what was odd and how it was handled

    def header(self, name: str) -> str:
        """The first value of a header, or ""."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""
