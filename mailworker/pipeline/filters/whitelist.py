"""2. Whitelist: when the integration lists senders, only they get through."""

from mailworker.addresses import matches_any_sender_entry
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, ignore


def check(ctx: EmailContext) -> Verdict:
    allowed = ctx.integration.whitelist_senders
    if not allowed:
        return CONTINUE
    if matches_any_sender_entry(ctx.email.from_address, allowed):
        return CONTINUE
    return ignore(f"sender {ctx.email.from_address or '(none)'} is not on the whitelist")
