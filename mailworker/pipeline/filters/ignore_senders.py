"""3. Ignore list: up to 20 addresses and domains whose mail never becomes a record."""

from mailworker.addresses import matches_any_sender_entry
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, ignore


def check(ctx: EmailContext) -> Verdict:
    if matches_any_sender_entry(ctx.email.from_address, ctx.integration.ignore_senders):
        return ignore(f"sender {ctx.email.from_address} is on the ignore list")
    return CONTINUE
