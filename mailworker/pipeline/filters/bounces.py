"""5b. Bounces of the desk's own emails (RFC 3464 and the shapes seen in practice).

Runs right after classification, on a bounce only. The bounce names its original by the
original's Message-ID (in the attached message or headers, or In-Reply-To/References); an id
the desk signed (outbound/message_ids.py) proves the original was ours, so nobody can mark
another's email bounced by writing its id. That outbox email is marked bounced with the
remote server's reason, and the address that failed is flagged on its user (agents see both
on the record page). A delay warning (Action: delayed) marks nothing: the server still tries.

A bounce whose original is not ours goes on: `automatic_mail.without_record` ignores it unless
it belongs to a record (then it joins the log like any automatic email).
"""

from __future__ import annotations

from django.utils import timezone

from mailworker.bounces import BounceReport, RecipientStatus, read_bounce
from mailworker.models import OutboxEmail
from mailworker.outbound.message_ids import record_of_signed_message_id
from mailworker.pipeline.context import (
    CONTINUE,
    Classification,
    EmailContext,
    Verdict,
    bounce,
    ignore,
)
from records.models import ServiceRecord
from records.services import flag_email_bounced


def our_original(report: BounceReport) -> OutboxEmail | None:
    """The desk's email the bounce is about: the first id it names that the desk signed."""
    for value in report.original_ids:
        if record_of_signed_message_id(value) is None:
            continue
        candidates = {value, value.lower()}
        outbox = OutboxEmail.objects.filter(message_id__in=candidates).order_by("-pk").first()
        if outbox is not None:
            return outbox
    return None


def reason_of(failures: list[RecipientStatus]) -> str:
    if len(failures) == 1:
        return failures[0].reason
    return "; ".join(
        f"{failure.recipient}: {failure.reason}" if failure.recipient else failure.reason
        for failure in failures
    )


def failed_addresses(outbox: OutboxEmail, failures: list[RecipientStatus]) -> list[str]:
    """The addresses of this email that failed: the ones the report names among the email's
    recipients, else (a report that names none, or only a rewritten one) all of them."""
    recipients = {address.lower(): address for address in outbox.to_addresses}
    named = [
        recipients[failure.recipient.lower()]
        for failure in failures
        if failure.recipient.lower() in recipients
    ]
    return list(dict.fromkeys(named)) or list(outbox.to_addresses)


def check(ctx: EmailContext) -> Verdict:
    if ctx.classification is not Classification.BOUNCE:
        return CONTINUE
    report = read_bounce(ctx.raw)
    outbox = our_original(report)
    if outbox is None:
        return CONTINUE
    ctx.record = ServiceRecord.objects.filter(pk=outbox.record_id).first()
    what = f"{outbox.get_kind_display().lower()} to {', '.join(outbox.to_addresses)}"
    if report.delayed_only:
        return ignore(f"a delay warning (Action: delayed) for the desk's {what}; not a bounce")
    failures = report.failures()
    if not failures:  # a report that only says delivered or relayed
        return ignore(f"a delivery report for the desk's {what} that reports no failure")
    reason = reason_of(failures)
    now = timezone.now()
    OutboxEmail.objects.filter(pk=outbox.pk).update(
        state=OutboxEmail.State.BOUNCED, bounced_at=now, bounce_reason=reason[:10_000]
    )
    for address in failed_addresses(outbox, failures):
        flag_email_bounced(email=address, reason=reason, at=now)
    return bounce(f"the desk's {what} bounced: {reason}"[:10_000])
