"""Services of the records app: people and records. Plain functions, keyword arguments."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from records import signals, write_behind
from records.models import (
    AdminGroup,
    Attachment,
    Category,
    Direction,
    Message,
    Original,
    Priority,
    ServiceRecord,
    Status,
    User,
)
from servicedesk.control_characters import without_control_characters

if TYPE_CHECKING:
    from integrations.models import EmailIntegration

USERNAME_MAX_LENGTH = 150
UNSET = object()  # "not given", where None is a meaningful value (no assigned admin)


def find_user_by_email(*, email: str) -> User | None:
    return find_users_by_email(emails=[email]).get(email.strip().lower())


def flag_email_bounced(*, email: str, reason: str, at: datetime) -> int:
    """An email of the desk to this address bounced: the users with it are flagged (agents
    see it on their records' pages), with the remote server's reason. Returns how many."""
    address = email.strip()
    if not address:
        return 0
    return User.objects.filter(email__iexact=address).update(
        email_bounced_at=at, email_bounce_reason=reason[:2000]
    )


def username_for(email: str) -> str:
    """The username a new end user gets when it is free: the address (what they know)."""
    return email.strip().lower()[:USERNAME_MAX_LENGTH]


def taken_usernames(usernames: Iterable[str]) -> set[str]:
    """Which of these usernames exist: one query for a chunk's new senders."""
    wanted = set(usernames)
    if not wanted:
        return set()
    return set(
        get_user_model().objects.filter(username__in=wanted).values_list("username", flat=True)
    )


def _free_username(email: str) -> str:
    """The address itself when free (it is what end users know), else with a suffix."""
    base = username_for(email)
    user_model = get_user_model()
    if not user_model.objects.filter(username=base).exists():
        return base
    while True:
        candidate = f"{base[: USERNAME_MAX_LENGTH - 7]}-{secrets.token_hex(3)}"
        if not user_model.objects.filter(username=candidate).exists():
            return candidate


def find_users_by_email(*, emails: list[str]) -> dict[str, User]:
    """The users with these addresses, keyed by the lowercased address: one query for many
    senders (the addresses are unique regardless of case)."""
    wanted = {email.strip().lower() for email in emails if email.strip()}
    if not wanted:
        return {}
    users = (
        get_user_model().objects.annotate(email_lower=Lower("email")).filter(email_lower__in=wanted)
    )
    return {user.email_lower: user for user in users}


def get_or_create_end_user(*, email: str, display_name: str = "") -> tuple[User, bool]:
    """The user with this address, or a new end user for an unregistered sender.

    An end user has no staff rights and an unusable password: they work with the desk by email
    only until an admin invites them. Two workers seeing the same new sender at once both end
    with the one user, thanks to the case-insensitive unique email constraint.
    """
    existing = find_user_by_email(email=email)
    if existing is not None:
        return existing, False
    return create_end_user(email=email, display_name=display_name)


def create_end_user(
    *, email: str, display_name: str = "", free_username: str | None = None
) -> tuple[User, bool]:
    """A new end user for an address the caller found unregistered; the existing user when
    another worker registered it meanwhile (then `created` is False). `free_username`: a
    username the caller knows is free (a chunk looked its senders' up at once).

    The display name comes from an email, the sender's to choose: control characters are
    cleaned out, not refused (a person typing a name is refused instead, see User)."""
    first_name, _, last_name = without_control_characters(display_name).strip().partition(" ")
    user = get_user_model()(
        username=free_username or _free_username(email),
        email=email.strip(),
        first_name=first_name[:150],
        last_name=last_name[:150],
        is_staff=False,
    )
    user.set_unusable_password()
    if write_behind.together():
        # Inserted with the chunk's rows, and no savepoint: a clash with another worker
        # rolls the whole chunk back, and it is written again an email at a time (below).
        write_behind.save(user)
        return user, True
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        existing = find_user_by_email(email=email)
        if existing is None:
            raise
        return existing, False
    return user, True


def ensure_default_statuses() -> None:
    """Create any of the default statuses that is missing (the migration does this once)."""
    from records.defaults import DEFAULT_STATUSES

    present = set(Status.objects.values_list("name", flat=True))
    for name, order, is_closed in DEFAULT_STATUSES:
        if name not in present:
            Status.objects.get_or_create(
                name=name, defaults={"order": order, "is_closed": is_closed}
            )


def default_new_status() -> Status:
    status = (
        Status.objects.filter(name="New").first() or Status.objects.filter(is_closed=False).first()
    )
    if status is None:
        ensure_default_statuses()
        status = Status.objects.get(name="New")
    return status


def create_record(
    *,
    title: str,
    description: str,
    requester: User,
    source_integration: EmailIntegration | None = None,
    status: Status | None = None,
) -> ServiceRecord:
    """A new service record in the status New (or `status`: the caller looked New up once
    for many records)."""
    title = " ".join(title.split())[:500] or "(no subject)"
    record = ServiceRecord(
        title=title,
        description=description,
        requester=requester,
        status=status or default_new_status(),
        source_integration=source_integration,
    )
    # With the chunk's other rows when the mail engine writes a chunk together: then it has
    # no number until the chunk ends.
    write_behind.save(record)
    return record


def add_message(
    *,
    record: ServiceRecord,
    direction: str,
    from_address: str,
    subject: str,
    text_body: str,
    html_body: str = "",
    to_addresses: list[str] | None = None,
    cc_addresses: list[str] | None = None,
    message_id: str = "",
    in_reply_to: str = "",
    references: str = "",
    date: datetime | None = None,
    raw_size: int = 0,
    integration: EmailIntegration | None = None,
    author: User | None = None,
    touch_record: bool = True,
    sender_verified: bool | None = None,
    authentication: str = "",
    is_internal: bool = False,
    original: Original | None = None,
    defects: list[str] | None = None,
) -> Message:
    """An entry in the record's message log; touching the record moves it up the lists
    (`touch_record=False` for the first message of a record created just now)."""
    message = Message(
        record=record,
        direction=direction,
        from_address=from_address[:998],
        subject=subject[:998],
        text_body=text_body,
        html_body=html_body,
        to_addresses=to_addresses or [],
        cc_addresses=cc_addresses or [],
        message_id=message_id[:998],
        in_reply_to=in_reply_to[:998],
        references=references,
        date=date,
        raw_size=raw_size,
        integration=integration,
        author=author,
        sender_verified=sender_verified,
        authentication=authentication[:500],
        is_internal=is_internal,
        original=original,
        defects=defects or [],
    )
    # With the chunk's other rows when the mail engine writes a chunk together.
    write_behind.save(message)
    if touch_record:
        write_behind.touch_record(record.pk)
    return message


class AttachmentData(Protocol):
    filename: str
    content_type: str
    content: bytes
    content_id: str


def record_email_received(
    *,
    record: ServiceRecord,
    new_record: bool,
    from_address: str,
    subject: str,
    text_body: str,
    html_body: str,
    to_addresses: list[str],
    cc_addresses: list[str],
    message_id: str,
    in_reply_to: str,
    references: str,
    date: datetime | None,
    raw_size: int,
    integration: EmailIntegration,
    sender_verified: bool | None,
    authentication: str,
    attachments: Iterable[AttachmentData] = (),
    automatic: bool,
    acknowledge: bool = True,
    author: User | None = None,
    internal: bool = False,
    original: Original | None = None,
    defects: list[str] | None = None,
) -> Message:
    """An incoming email in the record's message log, with its attachments, and its event:

    - `new_record`: the first email of a record opened by it (created just now, so not
      touched again): `record_created`, with `acknowledge` (False: the requester must not
      be told, an unverified or flooding sender);
    - a reply from a participant: `message_added`;
    - an agent's own email (`author`) or an internal note (`internal`, someone not on the
      record): no event, so nothing is emailed; an internal note leaves the record's place
      in the lists alone.

    Events are sent inside the caller's transaction; `automatic` (an auto-reply, a bounce)
    goes with them: no notification answers automatic mail.
    """
    message = add_message(
        record=record,
        direction=Direction.INCOMING,
        from_address=from_address,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        to_addresses=to_addresses,
        cc_addresses=cc_addresses,
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        date=date,
        raw_size=raw_size,
        integration=integration,
        touch_record=not (new_record or internal),
        author=author,
        sender_verified=sender_verified,
        authentication=authentication,
        is_internal=internal,
        original=original,
        defects=defects,
    )
    for part in attachments:
        add_attachment(
            message=message,
            filename=part.filename,
            content_type=part.content_type,
            content=part.content,
            content_id=part.content_id,
        )
    # Once the rows are written, when the mail engine writes a chunk together.
    if new_record:
        write_behind.send(
            signals.record_created,
            sender=Message,
            record=record,
            message=message,
            automatic=automatic,
            acknowledge=acknowledge,
        )
    elif author is None and not internal:
        write_behind.send(
            signals.message_added, sender=Message, message=message, automatic=automatic
        )
    return message


def add_attachment(
    *, message: Message, filename: str, content_type: str, content: bytes, content_id: str = ""
) -> Attachment:
    attachment = Attachment(
        message=message,
        filename=filename[:255],
        content_type=content_type[:255],
        size=len(content),
        content_id=content_id[:255],
    )
    write_behind.save_attachment(attachment, name=safe_storage_name(filename), content=content)
    return attachment


def safe_storage_name(filename: str) -> str:
    """A file name storage accepts: no path, no control characters, not empty."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[-100:] or "attachment.bin"


def change_status_on_reply(
    *, record: ServiceRecord, new_status: Status | None, unless_status_ids: set[int]
) -> bool:
    """Move a record to the integration's status on reply, unless its status is excepted."""
    if new_status is None or record.status_id == new_status.pk:
        return False
    if record.status_id in unless_status_ids:
        return False
    record.status = new_status
    record.save(update_fields=["status", "updated_at"])
    return True


@dataclass(frozen=True)
class UploadedFile:
    """A file an agent attached (records.forms reads it from the upload)."""

    filename: str
    content_type: str
    content: bytes
    content_id: str = ""


def post_agent_reply(
    *,
    record: ServiceRecord,
    author: User,
    body: str,
    integration_id: int | None = None,
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    attachments: Iterable[AttachmentData] = (),
) -> Message:
    """An agent's reply: written to the message log now, with its Cc, Bcc and files, and
    sent by email by the mail engine (which reads the files from the log when it sends)."""
    body = body.strip()
    if not body:
        raise ValidationError({"body": "Write a reply before sending."})
    with transaction.atomic():
        message = add_message(
            record=record,
            direction=Direction.OUTGOING,
            from_address=author.email,
            subject=record.title,
            text_body=body,
            to_addresses=[record.requester.email] if record.requester.email else [],
            cc_addresses=list(cc or []),
            author=author,
        )
        if bcc:
            message.bcc_addresses = list(bcc)
            message.save(update_fields=["bcc_addresses"])
        for part in attachments:
            add_attachment(
                message=message,
                filename=part.filename,
                content_type=part.content_type,
                content=part.content,
            )
        signals.agent_replied.send(sender=Message, message=message, integration_id=integration_id)
    return message


def add_internal_note(*, record: ServiceRecord, author: User, body: str) -> Message:
    """A note for staff on the record's message log: no event is sent, so it is emailed to
    no one, and it never makes anyone a participant of the record (see is_on_record)."""
    body = body.strip()
    if not body:
        raise ValidationError({"note": "Write the note before saving it."})
    return add_message(
        record=record,
        direction=Direction.OUTGOING,
        from_address=author.email,
        subject="",
        text_body=body,
        author=author,
        is_internal=True,
    )


DETAIL_FIELDS = ("status", "assigned_admin", "priority")
# How the detail fields are named to people (screens and emails).
DETAIL_LABELS = {"status": "Status", "assigned_admin": "Assigned admin", "priority": "Priority"}


def _display(record: ServiceRecord, field: str) -> str:
    if field == "priority":
        return record.get_priority_display()
    value = getattr(record, field)
    return str(value) if value is not None else "(none)"


def change_record_details(
    *,
    record: ServiceRecord,
    actor: User | None,
    status: Status | None = None,
    assigned_admin: User | None | object = UNSET,
    priority: int | None = None,
) -> dict[str, tuple[str, str]]:
    """Change status, assigned admin and priority; says which changed, old and new."""
    before = {field: _display(record, field) for field in DETAIL_FIELDS}
    if status is not None and status.pk != record.status_id:
        record.status = status
    if (
        assigned_admin is not UNSET
        and getattr(assigned_admin, "pk", None) != record.assigned_admin_id
    ):
        record.assigned_admin = assigned_admin
    if priority is not None and priority != record.priority:
        record.priority = priority
    after = {field: _display(record, field) for field in DETAIL_FIELDS}
    changes = {
        field: (before[field], after[field])
        for field in DETAIL_FIELDS
        if before[field] != after[field]
    }
    if not changes:
        return changes
    with transaction.atomic():
        record.save(update_fields=["status", "assigned_admin", "priority", "updated_at"])
        signals.record_details_changed.send(
            sender=ServiceRecord, record=record, actor=actor, changes=changes
        )
    return changes


def escalate_overdue_records() -> int:
    """Tell admins, once, about each open record whose due date has passed."""
    now = timezone.now()
    overdue = ServiceRecord.objects.filter(
        due_at__lt=now, escalated_at__isnull=True, status__is_closed=False
    ).select_related("requester", "assigned_admin", "status")
    count = 0
    for record in overdue:
        with transaction.atomic():
            updated = ServiceRecord.objects.filter(pk=record.pk, escalated_at__isnull=True).update(
                escalated_at=now
            )
            if updated:  # another worker did not get there first
                signals.record_escalated.send(sender=ServiceRecord, record=record)
                count += 1
    return count


def open_record_for_requester(
    *,
    actor: User,
    requester: User | None = None,
    requester_email: str = "",
    title: str,
    description: str,
    status: Status | None = None,
    priority: int = Priority.NORMAL,
    category: Category | None = None,
    group: AdminGroup | None = None,
    assigned_admin: User | None = None,
    due_at: datetime | None = None,
    notify_requester: bool = False,
) -> ServiceRecord:
    """A record an agent opens by hand (a phone call, a visit) for an existing user or for
    an address, which becomes an end user as the mail engine makes them. The usual
    record_created event is sent: admins hear of it as they would of an email, and the
    requester gets the acknowledgement only when the agent asked for it."""
    if requester is None:
        if not requester_email.strip():
            raise ValidationError(
                {"requester_email": "Choose a requester or type their email address."}
            )
        requester, _created = get_or_create_end_user(email=requester_email)
    title = " ".join(title.split())
    if not title:
        raise ValidationError({"title": "Give the record a title."})
    with transaction.atomic():
        record = create_record(
            title=title, description=description.strip(), requester=requester, status=status
        )
        record.priority = priority
        record.category = category
        record.group = group
        record.assigned_admin = assigned_admin
        record.due_at = due_at
        record.full_clean()
        record.save()
        signals.record_created.send(
            sender=ServiceRecord,
            record=record,
            message=None,
            automatic=False,
            acknowledge=notify_requester,
            actor=actor,
        )
    return record


def set_due_date(*, record: ServiceRecord, due_at: datetime | None) -> bool:
    """A new due date (or none). A record escalated for its old due date may be escalated
    again when the new one passes. Returns whether anything changed."""
    if due_at == record.due_at:
        return False
    record.due_at = due_at
    if due_at is None or due_at > timezone.now():
        record.escalated_at = None
    record.save(update_fields=["due_at", "escalated_at", "updated_at"])
    return True


def escalate_record(*, record: ServiceRecord, actor: User) -> None:
    """Escalate now: admins are told at once, as when the due date passes; the record is
    marked escalated, so the due-date task does not tell them a second time."""
    if record.status.is_closed:
        raise ValidationError("A closed record is not escalated: reopen it first.")
    with transaction.atomic():
        record.escalated_at = timezone.now()
        record.save(update_fields=["escalated_at", "updated_at"])
        signals.record_escalated.send(sender=ServiceRecord, record=record, actor=actor)


def change_records_in_bulk(
    *,
    records: Iterable[ServiceRecord],
    actor: User | None,
    status: Status | None = None,
    assigned_admin: User | None | object = UNSET,
) -> dict[int, dict[str, tuple[str, str]]]:
    """The same status and/or assignee for several records, each changed (and its event
    sent) as if it had been changed on its own page. Returns the changes by record number."""
    changed = {}
    with transaction.atomic():
        for record in records:
            changes = change_record_details(
                record=record, actor=actor, status=status, assigned_admin=assigned_admin
            )
            if changes:
                changed[record.pk] = changes
    return changed


def closed_status() -> Status:
    status = Status.objects.filter(is_closed=True).order_by("order", "pk").first()
    if status is None:
        ensure_default_statuses()
        status = Status.objects.filter(is_closed=True).order_by("order", "pk").first()
    assert status is not None
    return status


def merge_records(*, kept: ServiceRecord, merged: ServiceRecord, actor: User) -> None:
    """Merge `merged` into `kept`: its message log (messages with their attachments) joins
    the kept record's, it is closed and marked as merged into the kept one, and records
    merged into it before now point at the kept one (so a chain is never longer than one
    step). Its number goes on threading into the kept record (records.selectors.
    existing_records), and its requester counts as a participant there (is_on_record).
    Nobody is emailed: the requester's next email simply lands in the kept record."""
    if kept.pk == merged.pk:
        raise ValidationError("A record cannot be merged into itself.")
    if kept.merged_into_id is not None:
        raise ValidationError(
            f"{kept.display_number} was itself merged into #{kept.merged_into_id}: "
            f"merge into #{kept.merged_into_id} instead."
        )
    if merged.merged_into_id is not None:
        raise ValidationError(
            f"{merged.display_number} is already merged into #{merged.merged_into_id}."
        )
    with transaction.atomic():
        # Locked in a fixed order, so two agents merging the same pair both way round wait
        # for each other and the second one is refused.
        locked = {
            record.pk: record
            for record in ServiceRecord.objects.select_for_update()
            .filter(pk__in=[kept.pk, merged.pk])
            .order_by("pk")
        }
        if locked[kept.pk].merged_into_id or locked[merged.pk].merged_into_id:
            raise ValidationError("One of these records was merged meanwhile: reload the page.")
        Message.objects.filter(record=merged).update(record=kept)
        # The emails about it (held back ones among them) follow; the outbox belongs to the
        # mail engine, never imported here, and is reached through its reverse relation.
        if hasattr(ServiceRecord, "outbox_emails"):
            merged.outbox_emails.update(record=kept)
        ServiceRecord.objects.filter(merged_into=merged).update(merged_into=kept)
        merged.merged_into = kept
        merged.status = closed_status()
        merged.save(update_fields=["merged_into", "status", "updated_at"])
        add_message(
            record=kept,
            direction=Direction.OUTGOING,
            from_address=actor.email,
            subject=f"Merged {merged.display_number} into this record",
            text_body=(
                f"{merged.display_number} “{merged.title}” (requester "
                f"{merged.requester.email or merged.requester.get_username()}) was merged into "
                f"this record; its message log is above, in order of time."
                + (f"\n\nIts description:\n{merged.description}" if merged.description else "")
            ),
            author=actor,
            is_internal=True,
        )
