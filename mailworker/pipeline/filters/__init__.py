"""The inbound filters, in the order they run. Each is a small module with one job; adding
a rule is adding a module and a line here (see STYLE.md on Zammad)."""

from __future__ import annotations

from collections.abc import Callable

from mailworker.pipeline.context import EmailContext, Verdict
from mailworker.pipeline.filters import (
    authentication,
    automatic_mail,
    bounces,
    duplicate_guard,
    flood,
    ignore_senders,
    ignore_subject,
    loop_guard,
    match_record,
    participants,
    requester,
    sender_identity,
    whitelist,
)

Filter = Callable[[EmailContext], Verdict]

FILTERS: tuple[tuple[str, Filter], ...] = (
    ("loop guard", loop_guard.check),
    ("sender identity", sender_identity.check),
    ("sender authentication", authentication.check),
    ("whitelist", whitelist.check),
    ("ignore list", ignore_senders.check),
    ("ignore subject", ignore_subject.check),
    ("automatic mail by kind", automatic_mail.classify),
    ("bounce of the desk's email", bounces.check),
    ("match record", match_record.check),
    ("who may write", participants.check),
    ("automatic mail without record", automatic_mail.without_record),
    ("duplicate guard", duplicate_guard.check),
    ("flood limit", flood.check),
    ("requester", requester.check),
)


def run_filters(ctx: EmailContext) -> Verdict | None:
    """The first verdict that stops the email, or None when it goes on to be applied.

    For an email an admin asked to create a record for anyway (ctx.create_anyway): it is
    not matched to a record (adding it to one is the quarantine's "add to #N"), and the
    verdicts that would quarantine it go on, but for "no sender address" (no requester)."""
    for name, check in FILTERS:
        if ctx.create_anyway and name == "match record":
            continue
        verdict = check(ctx)
        if verdict.stops:
            if ctx.create_anyway and verdict.action == "quarantine" and name != "requester":
                continue
            return verdict
    return None
