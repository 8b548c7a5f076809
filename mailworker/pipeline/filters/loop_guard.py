"""1. Loop guard: mail from a mailbox the desk reads itself, or carrying our loop header, is
our own mail coming back; answering it would start a loop."""

from mailworker.headers import LOOP_HEADER
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, loop


def check(ctx: EmailContext) -> Verdict:
    if ctx.email.header(LOOP_HEADER):
        return loop(f"carries our own {LOOP_HEADER} header (sent by this desk)")
    sender = ctx.email.from_address
    if sender and sender in ctx.desk_addresses:
        return loop(f"sent from {sender}, a mailbox this desk reads")
    return CONTINUE
