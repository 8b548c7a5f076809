"""Matching: which record does this email belong to?

Threading headers first (a reply to one of our own emails names its Message-ID, even when the
subject was edited), then "#123" in the subject, the first number or the last as the
integration says ("Re: #12 was merged into #15" names both), then the body when the
integration extends the search there. A number that names no record does not match.
"""

from __future__ import annotations

import regex

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict
from records.models import ServiceRecord
from records.selectors import existing_records, record_by_message_ids

# "#123", not "&#123;" (an HTML entity) and not "abc#123" (part of a word or URL fragment).
RECORD_NUMBER = regex.compile(r"(?<![\w&#/])#(\d{1,12})\b")
BODY_SEARCH_LIMIT = 20_000  # characters of the body searched for a number


def record_numbers(text: str) -> list[int]:
    return [int(number) for number in RECORD_NUMBER.findall(text)]


def _pick(ctx: EmailContext, numbers: list[int]) -> ServiceRecord | None:
    """The first (or last) number in the text that names an existing record."""
    if not numbers:
        return None
    ordered = list(reversed(numbers)) if ctx.integration.use_last_record_number else numbers
    found = existing_records(numbers=ordered)
    return next((found[number] for number in ordered if number in found), None)


def check(ctx: EmailContext) -> Verdict:
    email = ctx.email
    record = record_by_message_ids(message_ids=[*email.in_reply_to, *email.references])
    if record is not None:
        ctx.record, ctx.matched_by = record, "thread"
        return CONTINUE
    searches = [("subject", email.subject)]
    if ctx.integration.search_body_for_record_number:
        searches.append(("body", email.text_body[:BODY_SEARCH_LIMIT]))
    for where, text in searches:
        record = _pick(ctx, record_numbers(text))
        if record is not None:
            ctx.record, ctx.matched_by = record, where
            return CONTINUE
    return CONTINUE
