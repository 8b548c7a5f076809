"""Flood limit: new records per sender address and per domain per hour. (Issue 11, part 5:
to be built.)"""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict


def check(ctx: EmailContext) -> Verdict:
    return CONTINUE
