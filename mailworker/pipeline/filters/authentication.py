"""Sender authentication: what the trusted receiving server said in Authentication-Results
(RFC 8601) about the sender's DMARC, and the integration's policy for a failure.

The answer is kept on the context for everything after: the record shows "sender not
verified", a staff address counts as an agent only when verified, and acknowledgements go
only to senders who are not known to have failed.
"""

from __future__ import annotations

from integrations.models import DmarcFailurePolicy
from mailworker.authentication import authenticate_sender
from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, quarantine


def check(ctx: EmailContext) -> Verdict:
    result = authenticate_sender(
        raw=ctx.raw,
        from_address=ctx.email.from_address,
        trusted_ids=ctx.integration.trusted_authserv_ids or (),
    )
    ctx.sender_verified = result.verified
    ctx.authentication = result.summary
    ctx.notes.extend(result.notes)
    if result.verified is False and (
        ctx.integration.dmarc_failure_policy == DmarcFailurePolicy.QUARANTINE
    ):
        return quarantine(f"sender failed DMARC: {result.summary}")
    return CONTINUE
