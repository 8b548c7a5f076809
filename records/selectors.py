"""Reads of records that are more than a `.get()`."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.contrib.auth.models import Permission
from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet

from integrations import selectors as integration_selectors
from integrations.models import EmailIntegration
from records import write_behind
from records.models import Message, ServiceRecord, User


def is_on_record(*, record: ServiceRecord, address: str) -> bool:
    """Whether `address` may write into `record` by email: its requester, an address one of
    its emails came from or went to (From, To, Cc of its message log, which holds every
    email of ours once sent), or an active staff member. One query, bounded by the record's
    message log.

    Internal notes do not count: they are what people not on the record wrote, and a
    stranger's first note must not make the stranger (or whoever the stranger put in Cc) a
    participant. Addresses are compared without regard to case; the lists are JSON, and an
    address stands in them as its JSON string (quotes included, so "bob@x.test" is not found
    inside "mbob@x.test").
    """
    address = address.strip().lower()
    if not address:
        return False
    # The requester, the most common writer, is known without a query when the record was
    # read with them (existing_records does).
    requester = record.requester if ServiceRecord.requester.is_cached(record) else None
    if requester is not None and (requester.email or "").strip().lower() == address:
        return True
    write_behind.write_for_record(record.pk)  # its messages of this chunk count too
    mentioned = Q(from_address__iexact=address)
    # SQLite keeps JSON as json.dumps wrote it (non-ASCII escaped), PostgreSQL's jsonb
    # writes it back unescaped: look for both spellings.
    for listed in {json.dumps(address), json.dumps(address, ensure_ascii=False)}:
        mentioned |= Q(to_addresses__icontains=listed) | Q(cc_addresses__icontains=listed)
    emails = Message.objects.filter(record=OuterRef("pk"), is_internal=False).filter(mentioned)
    staff = User.objects.filter(is_active=True, is_staff=True, email__iexact=address)
    # The requesters of records merged into this one: their messages moved here, so did
    # they (the merged record's other participants come with its message log).
    merged_requester = ServiceRecord.objects.filter(
        merged_into=OuterRef("pk"), requester__email__iexact=address
    )
    return (
        ServiceRecord.objects.filter(pk=record.pk)
        .filter(
            Q(requester__email__iexact=address)
            | Exists(emails)
            | Exists(staff)
            | Exists(merged_requester)
        )
        .exists()
    )


# A merge points a record at one that is not merged, and re-points the records merged into
# it (records.services.merge_records): one step is all a chain ever has. The bound is for
# data written otherwise (an import, the admin site).
MAX_MERGE_HOPS = 5


def existing_records(*, numbers: Iterable[int]) -> dict[int, ServiceRecord]:
    """The records these numbers name, by number; a record merged into another stands for
    the one it was merged into (so "#old" threads into the kept record). A chain is
    followed at most MAX_MERGE_HOPS steps and never round a cycle: where it stops, the
    record reached is the answer."""
    records = ServiceRecord.objects.select_related("requester")  # who may write (is_on_record)
    found = {record.pk: record for record in records.filter(pk__in=list(numbers))}
    resolved = dict(found)
    seen = {number: {number} for number in found}
    for _hop in range(MAX_MERGE_HOPS):
        pending = {
            number: record.merged_into_id
            for number, record in resolved.items()
            if record.merged_into_id is not None and record.merged_into_id not in seen[number]
        }
        if not pending:
            break
        wanted = set(pending.values())
        # A target read already is that same object: one object per record in the answer.
        targets = {pk: found[pk] for pk in wanted & found.keys()}
        targets |= records.in_bulk(wanted - targets.keys())
        for number, target in pending.items():
            if target in targets:
                resolved[number] = targets[target]
                seen[number].add(target)
    return resolved


def _number_in(query: str) -> int | None:
    """The record number a search names: "#123" or "123", else None."""
    text = query.strip().removeprefix("#").strip()
    return int(text) if text.isdigit() and len(text) < 10 else None


# The list's sortable columns: what ?sort= says, and the order it means (the number breaks
# ties, so a page never repeats or skips a record between two requests).
SORTS = {
    "number": ("pk",),
    "title": ("title", "pk"),
    "status": ("status__order", "status__name", "pk"),
    "priority": ("priority", "pk"),
    "requester": ("requester__email", "pk"),
    "assignee": ("assigned_admin__first_name", "assigned_admin__username", "pk"),
    "updated": ("updated_at", "pk"),
    "due": ("due_at", "pk"),
}
DEFAULT_SORT = "-updated"


def sort_records(records: QuerySet[ServiceRecord], sort: str) -> QuerySet[ServiceRecord]:
    """Order by a column of the list ("-due": descending); an unknown one is the default."""
    descending = sort.startswith("-")
    fields = SORTS.get(sort.removeprefix("-"))
    if fields is None:
        return sort_records(records, DEFAULT_SORT)
    if descending:
        return records.order_by(*(F(field).desc(nulls_last=True) for field in fields))
    return records.order_by(*(F(field).asc(nulls_last=True) for field in fields))


def records_for_list() -> QuerySet[ServiceRecord]:
    """Everything a row of the list shows, in one query."""
    return ServiceRecord.objects.select_related("status", "requester", "assigned_admin")


def matching_query(records: QuerySet[ServiceRecord], query: str) -> QuerySet[ServiceRecord]:
    """A query that is a number ("#123" or "123") finds that record; any other text must
    match, word by word, the title or the requester's address or name."""
    query = query.strip()
    number = _number_in(query)
    if number is not None:
        return records.filter(pk=number)
    for word in query.split():
        records = records.filter(
            Q(title__icontains=word)
            | Q(requester__email__icontains=word)
            | Q(requester__first_name__icontains=word)
            | Q(requester__last_name__icontains=word)
        )
    return records


def record_for_page(*, pk: int) -> ServiceRecord:
    """A record with everything its page shows about it; raises DoesNotExist."""
    return ServiceRecord.objects.select_related(
        "status", "requester", "assigned_admin", "group", "category", "source_integration"
    ).get(pk=pk)


def merge_candidates(*, record: ServiceRecord) -> QuerySet[ServiceRecord]:
    """The records another can be merged into: not merged themselves, and not this one."""
    return ServiceRecord.objects.filter(merged_into__isnull=True).exclude(pk=record.pk)


def message_log(*, record: ServiceRecord) -> QuerySet[Message]:
    """The record's whole message log, oldest first, with attachments and delivery state."""
    prefetch = ["attachments"]
    # The outbox belongs to the mail engine, which records never imports; its reverse
    # relation is there whenever the mail engine is installed.
    if hasattr(Message, "outbox"):
        prefetch.append("outbox")
    return (
        Message.objects.filter(record=record)
        .select_related("author")
        .prefetch_related(*prefetch)
        .order_by("created_at", "id")
    )


def suppressed_emails(*, record: ServiceRecord) -> list:
    """The emails the desk held back about this record (the outbox's guards, e.g. the cap
    on automatic emails to an outside address), oldest first, each with its reason. The
    outbox belongs to the mail engine, which records never imports: it is read through its
    reverse relation, there whenever the mail engine is installed."""
    if not hasattr(ServiceRecord, "outbox_emails"):
        return []
    return list(
        record.outbox_emails.filter(state="suppressed")
        .only("pk", "created_at", "kind", "to_addresses", "subject", "last_error", "record_id")
        .order_by("created_at", "pk")
    )


def agents() -> QuerySet[User]:
    """Staff who can be assigned a record."""
    return User.objects.filter(is_staff=True, is_active=True).order_by(
        "first_name", "last_name", "username"
    )


def sending_integrations() -> list[EmailIntegration]:
    return integration_selectors.sending_integrations()


def default_reply_integration(
    *, record: ServiceRecord, choices: list[EmailIntegration]
) -> EmailIntegration | None:
    """The integration a reply goes out through unless the agent picks another: the same
    rule as every email the desk sends about the record."""
    return integration_selectors.sending_integration(record=record, choices=choices)


# People (Settings > Users) ---------------------------------------------------------------


def user_managers() -> QuerySet[User]:
    """Active staff who may change users (superusers, or through a role): the desk must keep
    at least one."""
    granted = Permission.objects.filter(content_type__app_label="records", codename="change_user")
    return User.objects.filter(is_active=True, is_staff=True).filter(
        Q(is_superuser=True) | Q(user_permissions__in=granted) | Q(groups__permissions__in=granted)
    )


def _matching(users: QuerySet[User], query: str) -> QuerySet[User]:
    for word in query.split():
        users = users.filter(
            Q(username__icontains=word)
            | Q(email__icontains=word)
            | Q(first_name__icontains=word)
            | Q(last_name__icontains=word)
        )
    return users


def administrators() -> QuerySet[User]:
    """Superusers and staff with the Administrator role."""
    from records.roles import ADMINISTRATOR

    return User.objects.filter(is_staff=True).filter(
        Q(is_superuser=True) | Q(groups__name=ADMINISTRATOR)
    )


def staff_users(*, query: str = "", administrators_only: bool) -> QuerySet[User]:
    """Admins (administrators_only) or the other staff, the agents; active ones first."""
    admin_ids = administrators().values("pk")
    users = User.objects.filter(is_staff=True)
    users = (
        users.filter(pk__in=admin_ids) if administrators_only else users.exclude(pk__in=admin_ids)
    )
    return (
        _matching(users, query)
        .prefetch_related("groups", "admin_groups")
        .order_by("-is_active", "first_name", "last_name", "username")
    )


def end_users(*, query: str = "") -> QuerySet[User]:
    """Users who are not staff (senders the mail engine registered), with how many records
    they requested and when their last one was opened; the most recent first."""
    users = _matching(User.objects.filter(is_staff=False), query)
    return users.annotate(
        record_count=Count("requested_records"), last_record_at=Max("requested_records__created_at")
    ).order_by(F("last_record_at").desc(nulls_last=True), "email", "pk")


def records_requested_by(*, user: User) -> QuerySet[ServiceRecord]:
    return (
        ServiceRecord.objects.filter(requester=user)
        .select_related("status", "assigned_admin")
        .order_by("-created_at", "-pk")
    )
