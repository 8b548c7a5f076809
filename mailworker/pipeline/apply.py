"""Apply an email that passed the filters: open a record or join one's message log.

Runs inside the caller's transaction; everything here commits or rolls back together with
the processed marker.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q

from integrations.models import EmailIntegration
from mailworker.inbound import InboundEmail
from mailworker.models import OutboxEmail
from mailworker.outbound.queue import queue_email
from mailworker.parsing import remove_emojis
from mailworker.pipeline.context import EmailContext
from records.email_rules import RuleInput, RuleOutcome, apply_rule_outcome, evaluate_email_rules
from records.models import EmailRule, Message, ProcessedEmail, User
from records.services import (
    change_status_on_reply,
    create_end_user,
    create_record,
    find_user_by_email,
    get_or_create_end_user,
    record_email_received,
)


class NoSenderError(ValueError):
    """An email without a usable sender address cannot open a record (no requester)."""


def cleaned_subject_and_body(ctx: EmailContext) -> tuple[str, str]:
    return subject_and_body_of(ctx.email, ctx.integration)


def subject_and_body_of(email: InboundEmail, integration: EmailIntegration) -> tuple[str, str]:
    subject, body = email.subject, email.text_body
    if integration.remove_emojis:
        subject, body = remove_emojis(subject), remove_emojis(body)
    return subject, body


def evaluate_rules_for(
    email: InboundEmail, *, integration: EmailIntegration, rules: Iterable[EmailRule] | None
) -> RuleOutcome:
    """What the email rules decide for the record this email would open: evaluated before the
    write transaction (process.py), so a slow pattern never holds the database's lock. The
    rules see the integration that read the email (a rule may apply to chosen ones only), the
    sender identity, the recipients (the receiving server's Delivered-To first, see
    email_rules.MAX_VALUES_PER_FIELD), and the subject and body as the record keeps them."""
    subject, body = subject_and_body_of(email, integration)
    return evaluate_email_rules(
        facts=RuleInput(
            sender=email.from_address,
            recipients=list(dict.fromkeys([*email.delivered_to, *email.to, *email.cc])),
            subject=subject,
            body=body,
            integration_id=integration.pk,
        ),
        rules=rules,
    )


def log_email(
    ctx: EmailContext,
    *,
    subject: str,
    body: str,
    new_record: bool = False,
    author: User | None = None,
    internal: bool = False,
) -> Message:
    """Log the email in its record; records' service fires the event (record_created,
    message_added or none, see record_email_received)."""
    email: InboundEmail = ctx.email
    assert ctx.record is not None
    return record_email_received(
        record=ctx.record,
        new_record=new_record,
        from_address=email.from_address,
        subject=subject,
        text_body=body,
        html_body=email.html_body,
        to_addresses=email.to,
        cc_addresses=email.cc,
        message_id=email.message_id,
        in_reply_to=email.in_reply_to[0] if email.in_reply_to else "",
        references=" ".join(email.references),
        date=email.date,
        raw_size=email.raw_size,
        integration=ctx.integration,
        # Stored before the event fires: notifications read them.
        sender_verified=ctx.sender_verified,
        authentication=ctx.authentication,
        attachments=email.attachments,
        automatic=ctx.is_automatic,
        acknowledge=may_acknowledge_sender(ctx),
        author=author,
        internal=internal,
        original=ctx.original,
        defects=ctx.defects,
    )


def verified_agent(ctx: EmailContext) -> User | None:
    """The active staff user who wrote this email, only when the trusted receiving server
    verified its sender (DMARC passed for the From domain). Anyone can put a staff address
    in From: unverified, it is an outsider's email like any other."""
    address = ctx.email.from_address
    if ctx.sender_verified is not True or not address:
        return None
    known, user = ctx.chunk.user(address) if ctx.chunk else (False, None)
    if not known:
        user = find_user_by_email(email=address)
    if user is not None and user.is_active and user.is_staff:
        return user
    return None


def log_internal_note(ctx: EmailContext, *, subject: str, body: str) -> Message:
    """An email from someone not on the record (participants.py), kept for staff only: no
    status change, no message_added event (so no notification: nothing a non-participant
    wrote is emailed to the requester, nor can a stranger make the desk mail its admins), and
    the record is not moved up the lists."""
    return log_email(ctx, subject=subject, body=body, internal=True)


def requester_of(ctx: EmailContext) -> User:
    """The sender's user, created as an end user when new; from the chunk's look-up when it
    has one (one query for all the chunk's senders)."""
    email = ctx.email
    known, user = ctx.chunk.user(email.from_address) if ctx.chunk else (False, None)
    if user is not None:
        return user
    if known:  # the chunk looked and found nobody: no need to look again
        user, _created = create_end_user(
            email=email.from_address,
            display_name=email.from_name,
            free_username=ctx.chunk.free_username(email.from_address) if ctx.chunk else None,
        )
    else:
        user, _created = get_or_create_end_user(
            email=email.from_address, display_name=email.from_name
        )
    if ctx.chunk:
        ctx.chunk.note_user(user)
    return user


def open_record(ctx: EmailContext, *, subject: str, body: str) -> None:
    email = ctx.email
    if not email.from_address:
        raise NoSenderError("the email has no sender address, so no requester for a new record")
    requester = requester_of(ctx)
    lookups = ctx.lookups
    ctx.record = create_record(
        title=subject,
        description=body,
        requester=requester,
        source_integration=ctx.integration,
        status=lookups.new_status if lookups else None,
    )
    outcome = ctx.rule_outcome
    if outcome is None:  # a caller that did not evaluate the rules before its transaction
        outcome = evaluate_rules_for(
            email, integration=ctx.integration, rules=lookups.email_rules if lookups else None
        )
    apply_rule_outcome(record=ctx.record, outcome=outcome)


def change_status(ctx: EmailContext) -> None:
    """A person's reply may move the record on; an auto-reply or a bounce never does."""
    integration = ctx.integration
    if ctx.is_automatic or integration.change_status_to_id is None:
        return
    change_status_on_reply(
        record=ctx.record,
        new_status=integration.change_status_to,
        unless_status_ids=set(
            ctx.lookups.unless_status_ids
            if ctx.lookups
            else integration.unless_status_in.values_list("pk", flat=True)
        ),
    )


def queue_copy_of_incoming(ctx: EmailContext) -> None:
    address = ctx.integration.copy_incoming_to
    if address:
        queue_email(
            kind=OutboxEmail.Kind.COPY_INCOMING,
            to=[address],
            subject=f"Copy: {ctx.email.subject}"[:998],
            text=f"A copy of an email received by {ctx.integration.name}, attached as it arrived.",
            record=ctx.record,
            attached_email=ctx.raw,
        )


def may_acknowledge_sender(ctx: EmailContext) -> bool:
    """No acknowledgement to a sender who may not be who the email says (DMARC failed at a
    server the integration trusts) or to a flood released by an admin: the address may be
    forged, and the desk would mail an innocent (backscatter). Nor to automatic mail (a
    monitoring alert, a printer, bulk mail that opens a record): nobody reads it, and an
    auto-responder would answer back."""
    return not ctx.flood_released and ctx.sender_verified is not False and not ctx.is_automatic


def apply_email(ctx: EmailContext) -> str:
    """Create or update; returns the processed outcome."""
    subject, body = cleaned_subject_and_body(ctx)
    if ctx.record is None:
        open_record(ctx, subject=subject, body=body)
        log_email(ctx, subject=subject, body=body, new_record=True)
        outcome = ProcessedEmail.Outcome.CREATED
    elif ctx.as_internal_note:
        log_internal_note(ctx, subject=subject, body=body)
        outcome = ProcessedEmail.Outcome.APPENDED
    else:
        agent = verified_agent(ctx)
        if agent is None:
            change_status(ctx)
            log_email(ctx, subject=subject, body=body)
        else:
            # An agent writing into a record by email is the desk speaking, not the user
            # responding: no status change, and nothing is relayed to the requester (an
            # agent who means to answer the requester uses Reply on the record page, which
            # sends it as the desk's reply). Logged as the agent's own message.
            log_email(ctx, subject=subject, body=body, author=agent)
        outcome = ProcessedEmail.Outcome.APPENDED
    queue_copy_of_incoming(ctx)
    return outcome


def queue_forward_of_ignored(ctx: EmailContext, *, reason: str) -> int:
    """Forward an ignored email to the integration's chosen users (pending in the outbox)."""
    users = ctx.integration.forward_ignored_to.filter(is_active=True).exclude(
        Q(email="") | Q(email__isnull=True)
    )
    addresses = [user.email for user in users]
    if not addresses:
        return 0
    queue_email(
        kind=OutboxEmail.Kind.FORWARD_IGNORED,
        to=addresses,
        subject=f"Ignored: {ctx.email.subject}"[:998],
        text=f"The desk ignored this email ({reason}). It is attached as it arrived.",
        attached_email=ctx.raw,
    )
    return len(addresses)
