"""2. Sender identity: every later filter (whitelist, ignore list, duplicate guard, rules,
matching) decides on one address, the one parsing.py read from From (see from_header.py:
the address inside the angle brackets; a display name never supplies one). An email whose
sender could not be told for certain (two From addresses and no single Sender, an address
after the angle brackets, an unreadable From) is kept for an admin instead of being
answered, matched or filed under a guess."""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, quarantine


def check(ctx: EmailContext) -> Verdict:
    if ctx.email.sender_problem:
        return quarantine(f"sender is ambiguous: {ctx.email.sender_problem}")
    return CONTINUE
