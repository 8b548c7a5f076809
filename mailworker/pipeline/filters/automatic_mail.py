"""5. Auto-replies and bounces (RFC 3834, RFC 3464, and the headers used in practice).

`classify` only labels the email and goes on: an automatic email that belongs to a record is
logged there (without a status change or a notification). `without_record`, which runs after
matching, quarantines the ones that belong to no record instead of opening a record for an
out-of-office reply or a bounce.
"""

from __future__ import annotations

from mailworker.pipeline.context import (
    CONTINUE,
    Classification,
    EmailContext,
    Verdict,
    quarantine,
)

AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
BOUNCE_LOCAL_PARTS = {"mailer-daemon", "postmaster"}
# Headers whose mere presence marks an automatic reply (Exchange, vacation programs, CRMs).
AUTO_REPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress")


def bounce_reason(ctx: EmailContext) -> str:
    email = ctx.email
    if email.content_type == "multipart/report" and email.report_type == "delivery-status":
        return "a delivery status report (multipart/report)"
    if email.header("x-failed-recipients"):
        return "names failed recipients (X-Failed-Recipients)"
    local_part = email.from_address.partition("@")[0]
    if local_part in BOUNCE_LOCAL_PARTS:
        return f"sent by {local_part}"
    # Only an explicit empty Return-Path counts; a missing header says nothing.
    if "return-path" in email.headers and email.header("return-path").strip() in ("<>", ""):
        return "has an empty Return-Path (a null sender)"
    return ""


def auto_reply_reason(ctx: EmailContext) -> str:
    email = ctx.email
    auto_submitted = email.header("auto-submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"Auto-Submitted: {auto_submitted}"
    precedence = email.header("precedence").strip().lower()
    if precedence in AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    for header in AUTO_REPLY_HEADERS:
        if header in email.headers:
            return f"carries {header}"
    if email.content_type == "multipart/report" and email.report_type:
        return f"a {email.report_type} report"
    return ""


def classify(ctx: EmailContext) -> Verdict:
    if reason := bounce_reason(ctx):
        ctx.classification, ctx.classification_reason = Classification.BOUNCE, reason
    elif reason := auto_reply_reason(ctx):
        ctx.classification, ctx.classification_reason = Classification.AUTO_REPLY, reason
    return CONTINUE


def without_record(ctx: EmailContext) -> Verdict:
    if ctx.is_automatic and ctx.record is None:
        return quarantine(
            f"{ctx.classification.value} that matches no record ({ctx.classification_reason})"
        )
    return CONTINUE
