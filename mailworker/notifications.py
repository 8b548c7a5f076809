"""Notifications: the mail engine's answers to records' domain events.

Receivers run inside the transaction of the change, so the outbox rows they queue commit (or
roll back) with it. What goes to whom is switched in NotificationSettings; the texts are the
templates in templates/emails/.
"""

from __future__ import annotations

from django.dispatch import receiver
from django.template.loader import render_to_string

from integrations import signals as integration_signals
from integrations.models import EmailIntegration, OAuthGrant
from mailworker.alerts import queue_alert, staff_with_permission
from mailworker.models import NotificationSettings, OutboxEmail
from mailworker.outbound.compose import record_subject
from mailworker.outbound.email_templates import (
    change_values,
    message_values,
    person,
    record_values,
)
from mailworker.outbound.queue import batched, queue_email, record_thread
from mailworker.outbound.texts import render_email
from mailworker.status import note_alert_sent, note_reconnected
from records import signals
from records.models import Direction, Message, ServiceRecord
from records.services import DETAIL_LABELS

Kind = OutboxEmail.Kind
# Admin notifications quote the record (its title, the requester's words): only staff who
# may open the record in the desk hear about it.
VIEW_RECORDS = "records.view_servicerecord"
# A flood alert is about the quarantine: the staff who may look at it hear of it.
VIEW_QUARANTINE = "records.view_quarantine"


def change_lines(
    changes: dict[str, tuple[str, str]], *, fields: tuple[str, ...] | None = None
) -> list[tuple[str, str, str]]:
    return [
        (DETAIL_LABELS.get(field, field), old, new)
        for field, (old, new) in changes.items()
        if fields is None or field in fields
    ]


def admin_addresses(
    record: ServiceRecord,
    *,
    exclude: object = None,
    choices: NotificationSettings | None = None,
) -> list[str]:
    """Who among the admins hears about a record, as NotificationSettings says (`choices`:
    the settings the caller has already read). Only staff who may view records: an assigned
    admin or a group member without that permission is skipped, and when nobody is left, or
    nobody left has an email address, every staff member who may view records and has an
    address hears of it. `exclude` (who made the change) is left out after that choice:
    an admin's own change is news to nobody else when it was theirs to hear."""
    choice = (choices or current_settings()).admin_recipients
    Choice = NotificationSettings.AdminRecipients
    allowed = batched("staff who may view records", staff_who_may_view_records)
    by_pk = {user.pk: user for user in allowed}
    users = []
    if choice == Choice.ASSIGNED and record.assigned_admin_id:
        users = [by_pk[record.assigned_admin_id]] if record.assigned_admin_id in by_pk else []
    elif choice in (Choice.ASSIGNED, Choice.GROUP) and record.group_id:
        members = record.group.members.values_list("pk", flat=True)
        users = [by_pk[pk] for pk in members if pk in by_pk]
    users = [user for user in users if user.email] or [user for user in allowed if user.email]
    return [user.email for user in users if getattr(exclude, "pk", None) != user.pk]


def staff_who_may_view_records() -> list:
    return list(staff_with_permission(VIEW_RECORDS).order_by("pk"))


def current_settings() -> NotificationSettings:
    return batched("notification settings", NotificationSettings.current)


def requester_address(record: ServiceRecord) -> list[str]:
    return [record.requester.email] if record.requester.email else []


class _Thread:
    """The record's (In-Reply-To, References), read once for all the emails of one event
    and only if one is queued."""

    def __init__(self, record: ServiceRecord) -> None:
        self.record = record
        self._value: tuple[str, list[str]] | None = None

    @classmethod
    def of_new_record(cls, record: ServiceRecord, message: Message | None) -> _Thread:
        """A record an incoming email has just opened has that email as its whole thread:
        what record_thread() would read back, known without a query."""
        thread = cls(record)
        if message is not None and message.direction == Direction.INCOMING:
            ids = [message.message_id] if message.message_id else []
            thread._value = (ids[-1] if ids else "", ids)
        return thread

    def get(self) -> tuple[str, list[str]]:
        if self._value is None:
            self._value = record_thread(self.record)
        return self._value


def notify(
    *,
    record: ServiceRecord,
    to: list[str],
    template: str,
    context: dict,
    kind: str = Kind.NOTIFICATION,
    thread: _Thread | None = None,
) -> None:
    if not to:
        return
    # Plain values only (outbound/texts.py): admins may have edited the text.
    texts = render_email(template, {"record": record_values(record), **context})
    queue_email(
        kind=kind,
        to=to,
        subject=record_subject(subject=texts.subject, number=record.pk),
        text=texts.text,
        html=render_to_string("emails/base.html", {"text": texts.text}),
        record=record,
        automatic=True,
        thread=(thread or _Thread(record)).get(),
    )


def may_acknowledge(message: Message | None, *, acknowledge: bool) -> bool:
    """Whether the requester is told that the record was opened. Not when the sender's
    address was not verified (DMARC failed at a server the integration trusts: the address
    may be forged, and the acknowledgement would be backscatter to an innocent), nor when
    whoever opened the record said not to (an email released from a flood)."""
    return acknowledge and not (message is not None and message.sender_verified is False)


@receiver(signals.record_created)
def on_record_created(
    sender,
    record: ServiceRecord,
    message=None,
    automatic=False,
    acknowledge=True,
    **kwargs,
):
    # A record opened by automatic mail (a monitoring alert, a printer, bulk mail): no
    # automatic email answers it, so its sender is not acknowledged; admins still hear of it.
    choices = current_settings()
    context = {"message": message_values(message)}
    thread = _Thread.of_new_record(record, message)
    if (
        choices.end_user_on_created
        and not automatic
        and may_acknowledge(message, acknowledge=acknowledge)
    ):
        notify(
            record=record,
            to=requester_address(record),
            template="record_created_end_user",
            context=context,
            thread=thread,
        )
    if choices.admins_on_created:
        notify(
            record=record,
            to=admin_addresses(record, choices=choices),
            template="record_created_admin",
            context=context,
            thread=thread,
        )


@receiver(signals.message_added)
def on_message_added(sender, message: Message, automatic=False, **kwargs):
    if automatic:
        return
    choices = current_settings()
    record = message.record
    context = {"message": message_values(message)}
    thread = _Thread(record)
    if choices.admins_on_updated:
        notify(
            record=record,
            to=admin_addresses(record, choices=choices),
            template="record_updated_admin",
            context=context,
            thread=thread,
        )
    # The update quotes the message: never relay words whose sender a trusted server said
    # was forged (DMARC failed), however the address made it onto the record.
    if choices.end_user_on_updated and message.sender_verified is not False:
        notify(
            record=record,
            to=requester_address(record),
            template="record_updated_end_user",
            context=context,
            thread=thread,
        )


@receiver(signals.record_details_changed)
def on_details_changed(sender, record: ServiceRecord, actor=None, changes=None, **kwargs):
    choices = current_settings()
    changes = changes or {}
    # The end user hears about the status only: who works on it is the desk's business.
    if choices.end_user_on_details_changed and "status" in changes:
        notify(
            record=record,
            to=requester_address(record),
            template="details_changed_end_user",
            context={"changes": change_values(change_lines(changes, fields=("status",)))},
        )
    if choices.admins_on_details_changed:
        notify(
            record=record,
            to=admin_addresses(record, exclude=actor, choices=choices),
            template="details_changed_admin",
            context={
                "changes": change_values(change_lines(changes)),
                "actor": actor.get_username() if actor is not None else "",
            },
        )


@receiver(signals.record_escalated)
def on_escalated(sender, record: ServiceRecord, actor=None, **kwargs):
    """`actor`: the agent who pressed "Escalate now" (None: the due date passed)."""
    if current_settings().admins_on_escalated:
        notify(
            record=record,
            to=admin_addresses(record, exclude=actor),
            template="record_escalated",
            context={"actor": person(actor) if actor is not None else ""},
        )


@receiver(signals.agent_replied)
def on_agent_replied(sender, message: Message, integration_id: int | None = None, **kwargs):
    """An agent's reply is a person's email: never capped, always threaded, with the Cc,
    Bcc and files the agent added (the files are read from the message log when sent)."""
    record = message.record
    integration = None
    if integration_id is not None:
        integration = EmailIntegration.objects.filter(
            pk=integration_id, outgoing_enabled=True
        ).first()
    queue_email(
        kind=Kind.REPLY,
        to=requester_address(record),
        subject=record_subject(subject=f"Re: {record.title}", number=record.pk),
        text=message.text_body,
        html=render_to_string("emails/base.html", {"text": message.text_body}),
        record=record,
        integration=integration,
        log_message=message,
        automatic=False,
        cc=message.cc_addresses,
        bcc=message.bcc_addresses,
    )


def queue_flood_alert(*, integration: EmailIntegration, source: str, first_reason: str) -> bool:
    """Tell the staff who may see the quarantine that a flood is being held: once per flood
    (the pipeline calls this for the first email it holds), never once per email. When none
    of them has an email address, every admin who has one hears of it instead."""
    context = {"integration": {"name": integration.name}, "source": source, "reason": first_reason}
    return queue_alert(
        template="flood_held",
        context=context,
        first_choice=staff_with_permission(VIEW_QUARANTINE),
    )


@receiver(integration_signals.needs_reconnect)
def on_needs_reconnect(
    sender, integration: EmailIntegration, grant: OAuthGrant, provider: str, **kwargs
) -> None:
    """Tell admins, once (integrations send the signal once per refusal), that an OAuth 2.0
    integration must be connected again. It counts as the alert of the current failure
    streak too, so the passes that fail while it waits do not send a second, vaguer one.
    When no admin has an email address, nothing counts as told: the grant forgets the notice
    (a later refusal sends it again) and the failure streak's own alert stays due."""
    context = {
        "integration": {"name": integration.name},
        "provider": provider,
        "account": grant.account or integration.oauth_mailbox,
        "reason": grant.needs_reconnect_reason,
    }
    if not queue_alert(template="integration_needs_reconnect", context=context):
        OAuthGrant.objects.filter(pk=grant.pk).update(needs_reconnect_notified_at=None)
        grant.needs_reconnect_notified_at = None  # the caller's copy too
        return
    note_alert_sent(integration_id=integration.pk)


@receiver(integration_signals.reconnected)
def on_reconnected(sender, integration: EmailIntegration, **kwargs) -> None:
    """A new sign-in: the last error is history, and a new streak alerts admins again."""
    note_reconnected(integration_id=integration.pk)
