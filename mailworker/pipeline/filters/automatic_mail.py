"""5. Automatic mail by kind (RFC 3834, RFC 3464, RFC 2369/2919 and the headers used in practice).

`classify` only labels the email and goes on:

- a bounce (a delivery status report, X-Failed-Recipients, a mailer-daemon): filters/
  bounces.py reads it right after;
- an auto-reply (out-of-office, vacation: `Auto-Submitted: auto-replied`, X-Autoreply,
  X-Autorespond, `Precedence: auto_reply`, Exchange's inbox-rule and response-suppress
  headers, a report other than a delivery status);
- mailing-list and bulk mail (List-Id, List-Unsubscribe, `Precedence: bulk/list/junk`);
- other machine-generated mail (`Auto-Submitted: auto-generated`: monitoring, printers,
  other systems' incident emails).

Every kind is automatic: nothing the desk sends automatically answers it (apply.py,
notifications.py), and an automatic email that belongs to a record joins its log without a
status change or a notification. `without_record`, which runs after matching, decides what
one that belongs to no record does: an auto-reply is ignored, a bounce not of ours is ignored,
bulk mail follows the integration's bulk_mail_policy, and auto-generated mail opens a record
like any other.
"""

from __future__ import annotations

from integrations.models import BulkMailPolicy
from mailworker.pipeline.context import (
    CONTINUE,
    Classification,
    EmailContext,
    Verdict,
    ignore,
    quarantine,
)

BULK_PRECEDENCE = {"bulk", "junk", "list"}
BOUNCE_LOCAL_PARTS = {"mailer-daemon", "postmaster"}
# Headers whose mere presence marks an automatic reply (Exchange, vacation programs, CRMs).
AUTO_REPLY_HEADERS = (
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "x-ms-exchange-inbox-rules-loop",
)
LIST_HEADERS = ("list-id", "list-unsubscribe")


def bounce_reason(ctx: EmailContext) -> str:
    email = ctx.email
    if email.content_type == "multipart/report" and email.report_type == "delivery-status":
        return "a delivery status report (multipart/report)"
    if email.header("x-failed-recipients"):
        return "names failed recipients (X-Failed-Recipients)"
    # A From with no domain ("MAILER-DAEMON (Mail Delivery System)") has no address but
    # keeps its local part for exactly this.
    local_part = email.from_address.partition("@")[0] or email.from_local_part
    if local_part in BOUNCE_LOCAL_PARTS:
        return f"sent by {local_part}"
    return ""


def null_sender(ctx: EmailContext) -> bool:
    """Only an explicit empty Return-Path counts; a missing header says nothing."""
    email = ctx.email
    return "return-path" in email.headers and email.header("return-path").strip() in ("<>", "")


def auto_reply_reason(ctx: EmailContext) -> str:
    email = ctx.email
    auto_submitted = email.header("auto-submitted").strip().lower()
    if auto_submitted.startswith("auto-replied"):
        return f"Auto-Submitted: {auto_submitted}"
    if email.header("precedence").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    for header in AUTO_REPLY_HEADERS:
        if header in email.headers:
            return f"carries {header}"
    if email.content_type == "multipart/report" and email.report_type:
        return f"a {email.report_type} report"
    return ""


def bulk_reason(ctx: EmailContext) -> str:
    email = ctx.email
    for header in LIST_HEADERS:
        if header in email.headers:
            return f"mailing-list mail (carries {header})"
    precedence = email.header("precedence").strip().lower()
    if precedence in BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    return ""


def auto_generated_reason(ctx: EmailContext) -> str:
    auto_submitted = ctx.email.header("auto-submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"Auto-Submitted: {auto_submitted}"
    return ""


def classify(ctx: EmailContext) -> Verdict:
    # Most telling first: a report says what it is, an auto-reply header says more than a
    # list header (a list may relay a member's out-of-office), and a null sender alone is
    # taken for a bounce only when nothing else says what the email is.
    for classification, reason_of in (
        (Classification.BOUNCE, bounce_reason),
        (Classification.AUTO_REPLY, auto_reply_reason),
        (Classification.BULK, bulk_reason),
        (Classification.AUTO_GENERATED, auto_generated_reason),
    ):
        if reason := reason_of(ctx):
            ctx.classification, ctx.classification_reason = classification, reason
            return CONTINUE
    if null_sender(ctx):
        ctx.classification = Classification.BOUNCE
        ctx.classification_reason = "has an empty Return-Path (a null sender)"
    return CONTINUE


def without_record(ctx: EmailContext) -> Verdict:
    if ctx.record is not None or not ctx.is_automatic:
        return CONTINUE
    kind, reason = ctx.classification, ctx.classification_reason
    if kind is Classification.AUTO_REPLY:
        return ignore(f"an auto-reply that matches no record ({reason})")
    if kind is Classification.BOUNCE:
        return ignore(f"a bounce that is not of an email of the desk ({reason})")
    if kind is Classification.BULK:
        policy = ctx.integration.bulk_mail_policy
        if policy == BulkMailPolicy.IGNORE:
            return ignore(
                f"bulk mail that matches no record ({reason}); the integration ignores it"
            )
        if policy == BulkMailPolicy.QUARANTINE:
            return quarantine(
                f"bulk mail that matches no record ({reason}); the integration holds it"
            )
    # Auto-generated mail, and bulk mail under BulkMailPolicy.RECORD: a record like any other,
    # never answered automatically (apply.py).
    return CONTINUE
