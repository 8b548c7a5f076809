"""Sender identity: one address, the one inside the angle brackets of From; an email whose
sender is ambiguous after strict parsing is quarantined. (Issue 11, part 3: to be built.)"""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict


def check(ctx: EmailContext) -> Verdict:
    return CONTINUE
