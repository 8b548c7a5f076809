"""Matching: which record does this email belong to?

Threading headers first, but only the desk's own signed Message-IDs (outbound/message_ids.py):
a reply to one of our emails names it, even when the subject was edited. An incoming email's
own Message-ID never decides where a later email goes: senders choose them, and a stranger
who was in Cc can reuse the requester's to pull the requester's next reply into a record of
their own. Then "#123" in the subject, the first number or the last as the integration says
("Re: #12 was merged into #15" names both), then the body when the integration extends the
search there. A number that names no record does not match. Whoever matched, the next filter
(participants.py) decides whether the sender may write into that record.
"""

from __future__ import annotations

import regex

from integrations.models import EmailIntegration
from mailworker.inbound import InboundEmail
from mailworker.outbound.message_ids import record_of_signed_message_id
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict
from records.models import ServiceRecord
from records.selectors import existing_records

# "#123", not "&#123;" (an HTML entity) and not "abc#123" (part of a word or URL fragment).
RECORD_NUMBER = regex.compile(r"(?<![\w&#/])#(\d{1,12})\b")
BODY_SEARCH_LIMIT = 20_000  # characters of the body searched for a number
# Ids of the threading headers looked at: a reply names its parent in In-Reply-To and its
# latest ancestors at the end of References; a header of thousands of ids is someone's game.
MAX_IN_REPLY_TO = 10
MAX_REFERENCES = 100


def record_numbers(text: str) -> list[int]:
    return [int(number) for number in RECORD_NUMBER.findall(text)]


def _pick(ctx: EmailContext, numbers: list[int]) -> ServiceRecord | None:
    """The first (or last) number in the text that names an existing record."""
    if not numbers:
        return None
    ordered = list(reversed(numbers)) if ctx.integration.use_last_record_number else numbers
    found = _existing(ctx, ordered)
    return next((found[number] for number in ordered if number in found), None)


def _existing(ctx: EmailContext, numbers: list[int]) -> dict[int, ServiceRecord]:
    """existing_records(), as the chunk read them for all its emails when it did."""
    known = ctx.chunk.records_named(numbers) if ctx.chunk is not None else None
    return known if known is not None else existing_records(numbers=numbers)


def numbers_named(email: InboundEmail, integration: EmailIntegration) -> set[int]:
    """Every record number check() may look up for this email (read for a whole chunk)."""
    numbers = set(signed_thread_numbers(email))
    for _where, text in searched_texts(email, integration):
        numbers |= set(record_numbers(text))
    return numbers


def searched_texts(email: InboundEmail, integration: EmailIntegration) -> list[tuple[str, str]]:
    """Where "#123" is looked for, in order: the subject, then the body when the integration
    extends the search there."""
    searches = [("subject", email.subject)]
    if integration.search_body_for_record_number:
        searches.append(("body", email.text_body[:BODY_SEARCH_LIMIT]))
    return searches


def signed_thread_numbers(email: InboundEmail) -> list[int]:
    """The records our signed ids in the threading headers name, the most telling first: the
    email answered (In-Reply-To), then References from the newest back. A reply to a record's
    notification that also quotes an older thread goes where the latest email of ours was."""
    candidates = [
        *email.in_reply_to[:MAX_IN_REPLY_TO],
        *reversed(email.references[-MAX_REFERENCES:]),
    ]
    numbers = (record_of_signed_message_id(message_id) for message_id in candidates)
    return list(dict.fromkeys(number for number in numbers if number is not None))


def record_by_thread(ctx: EmailContext) -> ServiceRecord | None:
    """The first record, in that order, that one of our signed ids names and that still
    exists (one query for all of them)."""
    numbers = signed_thread_numbers(ctx.email)
    if not numbers:
        return None
    found = _existing(ctx, numbers)
    return next((found[number] for number in numbers if number in found), None)


def check(ctx: EmailContext) -> Verdict:
    email = ctx.email
    record = record_by_thread(ctx)
    if record is not None:
        ctx.record, ctx.matched_by = record, "thread"
        return CONTINUE
    for where, text in searched_texts(email, ctx.integration):
        record = _pick(ctx, record_numbers(text))
        if record is not None:
            ctx.record, ctx.matched_by = record, where
            return CONTINUE
    return CONTINUE
