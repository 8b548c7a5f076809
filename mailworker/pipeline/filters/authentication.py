"""Sender authentication: the trusted receiving server's Authentication-Results (RFC 8601)
and the integration's DMARC policy. (Issue 11, part 4: to be built.)"""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict


def check(ctx: EmailContext) -> Verdict:
    return CONTINUE
