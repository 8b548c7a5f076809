"""Rows written a chunk at a time: the end users, records, messages, attachments and
incoming-log rows of a chunk of incoming emails, inserted with one statement per table when
the chunk ends (servicedesk.bulk_insert: a COPY on PostgreSQL, a multi-row INSERT ...
RETURNING elsewhere; their keys set either way), instead of one INSERT an email each; then
the events of the records it opened.

Only the mail engine's chunk writer turns it on (`rows_written_together`), inside its
transaction and without savepoints: an email that fails there makes the whole chunk roll
back and be written again one email at a time (mailworker.pipeline.process), where every
row is saved at once as everywhere else.

A row pending here has no key yet. Nothing the chunk's emails look up can be pending: a new
record's number is known to nobody before its acknowledgement is sent. A reader that may
meet pending rows asks for them to be written first: the readers of a record's message log
(who is on the record, the thread of an email) call `write_for_record`, and whoever needs a
key calls `write_pending`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.core.files.base import ContentFile
from django.db import models
from django.dispatch import Signal
from django.utils import timezone

from records.models import Attachment, Message, ProcessedEmail, ServiceRecord, User
from servicedesk.bulk_insert import insert_rows


@dataclass
class PendingRows:
    users: list[User] = field(default_factory=list)
    records: list[ServiceRecord] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    # Attachments with the name and content of their file: the file is stored once its
    # message has a key (the storage path holds the record's and the message's).
    attachments: list[tuple[Attachment, str, bytes]] = field(default_factory=list)
    markers: list[ProcessedEmail] = field(default_factory=list)
    # Records a reply moved up the lists: one UPDATE for all of them.
    touched: set[int] = field(default_factory=set)
    # Existing records with messages among `messages`, for write_for_record.
    logs: set[int] = field(default_factory=set)
    # Events of rows still pending (a record opened), sent once the rows are written.
    events: list[tuple[Signal, dict[str, Any]]] = field(default_factory=list)


_pending: ContextVar[PendingRows | None] = ContextVar("pending_rows", default=None)


@contextmanager
def rows_written_together() -> Iterator[PendingRows]:
    """Inside the caller's transaction: the rows saved through `save` meanwhile are
    inserted when the block ends without an error, then the events sent. On an error
    nothing more is inserted (the caller's transaction rolls back anyway) and the files
    stored for attachments are removed."""
    rows = PendingRows()
    token = _pending.set(rows)
    try:
        with files_removed_on_error():
            yield rows
            _insert(rows)
    finally:
        _pending.reset(token)


def together() -> bool:
    """Whether a chunk is being written together (no savepoints: see the module)."""
    return _pending.get() is not None


def save(row: models.Model) -> None:
    """Save a new end user, record, message or incoming-log row: with the chunk's rows when
    a chunk is written together, else at once."""
    rows = _pending.get()
    if rows is None:
        row.save()
    elif isinstance(row, Message):
        rows.messages.append(row)
        if row.record_id is not None:
            rows.logs.add(row.record_id)
    elif isinstance(row, ProcessedEmail):
        rows.markers.append(row)
    elif isinstance(row, ServiceRecord):
        rows.records.append(row)
    elif isinstance(row, User):
        rows.users.append(row)
    else:
        raise TypeError(f"{type(row).__name__} rows are not written together")


def save_attachment(attachment: Attachment, *, name: str, content: bytes) -> None:
    """Store the attachment's file and save its row, at once or with the chunk's rows."""
    rows = _pending.get()
    if rows is None:
        _store_file(attachment, name=name, content=content)
        attachment.save()
    else:
        rows.attachments.append((attachment, name, content))


def _store_file(attachment: Attachment, *, name: str, content: bytes) -> None:
    """Write the file, noted for removal should the enclosing block fail."""
    attachment.file.save(name, ContentFile(content), save=False)
    stored = _stored_files.get()
    if stored is not None:
        stored.append(attachment)


_stored_files: ContextVar[list[Attachment] | None] = ContextVar("stored_files", default=None)


@contextmanager
def files_removed_on_error() -> Iterator[None]:
    """For a block whose rows roll back on an error (an email's savepoint, a chunk written
    together): the files its attachments stored are removed with them. Nested in another
    such block, what it stored is handed on to it when it ends well: the outer block may
    still roll back."""
    outer = _stored_files.get()
    stored: list[Attachment] = []
    token = _stored_files.set(stored)
    try:
        yield
    except BaseException:
        _remove_files(stored)
        raise
    finally:
        _stored_files.reset(token)
    if outer is not None:
        outer.extend(stored)


def send(signal: Signal, **kwargs: Any) -> None:
    """Send a domain event about rows saved through `save`: once they are written."""
    rows = _pending.get()
    if rows is None:
        signal.send(**kwargs)
    else:
        rows.events.append((signal, kwargs))


def touch_record(record_id: int) -> None:
    """Move a record up the lists (its updated_at), at once or with the chunk's rows."""
    rows = _pending.get()
    if rows is None:
        ServiceRecord.objects.filter(pk=record_id).update(updated_at=timezone.now())
    else:
        rows.touched.add(record_id)


def write_for_record(record_id: int | None) -> None:
    """Before a record's message log is read: its pending messages are written (with
    everything pending, so that keys stay in the order of arrival)."""
    rows = _pending.get()
    if rows is not None and (record_id is None or record_id in rows.logs):
        _insert(rows)


def write_pending() -> None:
    """Everything pending, now (a row's key is needed)."""
    rows = _pending.get()
    if rows is not None:
        _insert(rows)


def _insert(rows: PendingRows) -> None:
    """In the order the rows point at each other; insert_rows fills the keys in, and each
    row's foreign keys are read from the objects it points at when it is inserted."""
    if rows.users:
        insert_rows(_taken(rows.users))
    if rows.records:
        insert_rows(_taken(rows.records))
    if rows.messages:
        insert_rows(_taken(rows.messages))
        rows.logs.clear()
    if rows.attachments:
        attachments = _taken(rows.attachments)
        for attachment, name, content in attachments:
            _store_file(attachment, name=name, content=content)
        insert_rows([attachment for attachment, _name, _data in attachments])
    if rows.markers:
        insert_rows(_taken(rows.markers))
    if rows.touched:
        ServiceRecord.objects.filter(pk__in=rows.touched).update(updated_at=timezone.now())
        rows.touched.clear()
    # Last, and taken first: a receiver may queue rows or ask for pending ones again.
    for signal, kwargs in _taken(rows.events):
        signal.send(**kwargs)


def _taken(pending: list) -> list:
    """The pending items, the list left empty."""
    taken = list(pending)
    pending.clear()
    return taken


def _remove_files(attachments: list[Attachment]) -> None:
    """Files whose rows the failed transaction rolls back: nothing points at them."""
    for attachment in attachments:
        if attachment.file.name:
            with suppress(OSError):
                attachment.file.storage.delete(attachment.file.name)
