"""Flood limit: an email that would open a new record is held in quarantine when its sender
address, or its sender's domain, has opened FLOOD_RECORDS_PER_SENDER_PER_HOUR (or
FLOOD_RECORDS_PER_DOMAIN_PER_HOUR) records within the hour. A script sending 500 emails
then makes 20 records, not 500, and no acknowledgement goes to the 480 forged senders.

Replies to an existing record are never held (a busy conversation is not a flood), nor are
automatic emails (they open no record anyway). The domain limit skips public webmail, the
desk's own domains and FLOOD_EXEMPT_DOMAINS (see flood_counts.exempt_domains). The held
emails carry the flood's key; the stage that writes the quarantine sets it and alerts the
admins once per flood, and the quarantine screen releases a flood at once.
"""

from __future__ import annotations

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, quarantine
from mailworker.pipeline.flood_counts import (
    exempt_domains,
    flood_keys,
    limit_of,
    new_records_in_window,
    source_of,
)


def new_records(ctx: EmailContext, key: str) -> int:
    """Records opened within the hour for this key: from the chunk's counts, which include
    the records opened earlier in the same chunk, or from the database."""
    known, count = ctx.chunk.new_records_for(key) if ctx.chunk else (False, 0)
    if known:
        return count
    return new_records_in_window([key])[key]


def check(ctx: EmailContext) -> Verdict:
    if ctx.record is not None or ctx.flood_released or ctx.is_automatic:
        return CONTINUE
    exempt = exempt_domains(ctx.desk_addresses)
    for key in flood_keys(ctx.email.from_address, exempt=exempt):
        limit = limit_of(key)
        if limit > 0 and new_records(ctx, key) >= limit:
            ctx.flood_key = key
            return quarantine(
                f"flood from {source_of(key)}: {limit} new records within an hour already; "
                "release it from the quarantine screen if it is wanted"
            )
    return CONTINUE
