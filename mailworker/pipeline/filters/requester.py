"""7. A new record needs a requester: an email with no usable sender address (no From, an
unreadable one, or only a group such as `undisclosed-recipients:;`) is kept in quarantine
for an admin instead of opening a record nobody can be answered on."""

from mailworker.pipeline.context import CONTINUE, EmailContext, Verdict, quarantine


def check(ctx: EmailContext) -> Verdict:
    if ctx.record is None and not ctx.email.from_address:
        return quarantine("has no sender address, so a new record would have no requester")
    return CONTINUE
