"""Who may write into a record: only the people on it.

An email that matched a record, by "#N" or by one of our signed Message-IDs, joins it only
when its sender is on that record (records.selectors.is_on_record: the requester, an address
its emails came from or went to, or staff). Record numbers are sequential and printed in every
acknowledgement, so "Re: #12" proves nothing. A signed id proves the sender saw one of our
emails about the record, but not that the requester wanted them to write into it: the
requester may have forwarded our notification to someone, who answers. The desk does not
take that as consent, so the same rule applies: whoever is not on the record follows the
integration's stranger policy, and nothing they wrote is ever emailed to the requester.

- NEW_RECORD (the default): the email opens a record of its own, with its sender as the
  requester; record N stays untouched and its "#N" stays in the new record's title.
- INTERNAL_NOTE: logged on record N as an internal note for staff, marked as not from a
  participant; no status change, no notification.
- QUARANTINE: held in quarantine with the reason.

An automatic email (an auto-reply, a bounce from a mailer daemon, which is never on the
record) that names a record is an internal note under both other policies: it never opens a
record, and as a note the agents still see, say, that the requester's address bounces.
"""

from __future__ import annotations

from integrations.models import StrangerPolicy
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, quarantine
from records.selectors import is_on_record


def stranger_reason(ctx: EmailContext) -> str:
    assert ctx.record is not None
    sender = ctx.email.from_address or "(no sender address)"
    return f"sender {sender} is not on record #{ctx.record.pk}"


def check(ctx: EmailContext) -> Verdict:
    record = ctx.record
    if record is None:
        return CONTINUE
    sender = ctx.email.from_address
    if sender and is_on_record(record=record, address=sender):
        return CONTINUE
    policy = ctx.integration.stranger_policy
    reason = stranger_reason(ctx)
    if policy == StrangerPolicy.QUARANTINE:
        return quarantine(reason)
    if policy == StrangerPolicy.INTERNAL_NOTE or ctx.is_automatic:
        ctx.as_internal_note = True
        ctx.notes.append(f"internal note: {reason}")
        return CONTINUE
    # NEW_RECORD: as if the email had named no record at all.
    ctx.notes.append(f"new record: {reason}")
    ctx.record, ctx.matched_by = None, ""
    return CONTINUE
