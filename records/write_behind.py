"""Rows written a chunk at a time: the message log's messages and attachments and the
incoming email log's rows of a chunk of incoming emails, inserted with one multi-row
statement per table when the chunk ends (RETURNING their keys, on PostgreSQL and SQLite
alike), instead of one INSERT an email each.

Only the mail engine's chunk writer turns it on (`rows_written_together`), inside its
transaction and without savepoints: an email that fails there makes the whole chunk roll
back and be written again one email at a time (mailworker.pipeline.process), where every
row is saved at once as everywhere else.

A reader that needs a pending row in the database asks for it first: the readers of a
record's message log (who is on the record, the thread of a notification) call
`write_for_record`, and a key that is still None is filled by `write_pending`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.db import models
from django.utils import timezone

from records.models import Attachment, Message, ProcessedEmail, ServiceRecord


@dataclass
class PendingRows:
    messages: list[Message] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    markers: list[ProcessedEmail] = field(default_factory=list)
    # Records a reply moved up the lists: one UPDATE for all of them.
    touched: set[int] = field(default_factory=set)
    # Records with messages among `messages`, for write_for_record.
    records: set[int] = field(default_factory=set)
    # Every attachment saved through the block, inserted meanwhile or not: on an error the
    # transaction rolls all of them back, and their files are removed.
    all_attachments: list[Attachment] = field(default_factory=list)


_pending: ContextVar[PendingRows | None] = ContextVar("pending_rows", default=None)


@contextmanager
def rows_written_together() -> Iterator[PendingRows]:
    """Inside the caller's transaction: the rows saved through `save` meanwhile are
    inserted when the block ends without an error. On an error nothing is inserted (the
    caller's transaction rolls back anyway) and the attachments' files already written to
    storage are removed."""
    rows = PendingRows()
    token = _pending.set(rows)
    try:
        yield rows
        _insert(rows)
    except BaseException:
        _remove_files(rows.all_attachments)
        raise
    finally:
        _pending.reset(token)


def together() -> bool:
    """Whether a chunk is being written together (no savepoints: see the module)."""
    return _pending.get() is not None


def save(row: models.Model) -> None:
    """Save a new Message, Attachment or ProcessedEmail: with the chunk's rows when a chunk
    writes together, else at once."""
    rows = _pending.get()
    if rows is None:
        row.save()
    elif isinstance(row, Message):
        rows.messages.append(row)
        rows.records.add(row.record_id)
    elif isinstance(row, Attachment):
        rows.attachments.append(row)
        rows.all_attachments.append(row)
    elif isinstance(row, ProcessedEmail):
        rows.markers.append(row)
    else:
        raise TypeError(f"{type(row).__name__} rows are not written together")


def touch_record(record_id: int) -> None:
    """Move a record up the lists (its updated_at), at once or with the chunk's rows."""
    rows = _pending.get()
    if rows is None:
        ServiceRecord.objects.filter(pk=record_id).update(updated_at=timezone.now())
    else:
        rows.touched.add(record_id)


def write_for_record(record_id: int) -> None:
    """Before the record's message log is read: its pending messages are written (with
    everything pending, so that keys stay in the order of arrival)."""
    rows = _pending.get()
    if rows is not None and record_id in rows.records:
        _insert(rows)


def write_pending() -> None:
    """Everything pending, now (a row's key is needed)."""
    rows = _pending.get()
    if rows is not None:
        _insert(rows)


def _insert(rows: PendingRows) -> None:
    # Messages first: their attachments point at them, and bulk_create fills the keys in.
    if rows.messages:
        Message.objects.bulk_create(rows.messages)
        rows.messages.clear()
        rows.records.clear()
    if rows.attachments:
        Attachment.objects.bulk_create(rows.attachments)
        rows.attachments.clear()
    if rows.markers:
        ProcessedEmail.objects.bulk_create(rows.markers)
        rows.markers.clear()
    if rows.touched:
        ServiceRecord.objects.filter(pk__in=rows.touched).update(updated_at=timezone.now())
        rows.touched.clear()


def _remove_files(attachments: list[Attachment]) -> None:
    """The files of attachments whose rows were never inserted: nothing points at them."""
    for attachment in attachments:
        if attachment.file.name:
            with suppress(OSError):
                attachment.file.storage.delete(attachment.file.name)
