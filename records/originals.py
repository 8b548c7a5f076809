"""Originals: every incoming email exactly as it arrived, gzip-compressed, in the storage the
desk uses for attachments (default_storage, MEDIA_ROOT: a path ops can put on a volume).

Writing happens in two steps so that a committed row never lacks its file:

1. `store_bytes` / `store_file` write the compressed file (no database; the parse-ahead
   process calls `store_bytes` beside the writes of the previous chunk). One file per email,
   under originals/YYYY/MM/DD/ of its arrival day.
2. `original_row` creates the records.Original row in the email's transaction, before the
   email is acked. A crash between the two leaves an orphan file, never a row without a file;
   `delete_expired` removes orphans with the day directories older than the retention period.

Compression: gzip files (RFC 1952, any gunzip reads them) of deflate with Huffman coding only
(zlib level 1, Z_HUFFMAN_ONLY). Most of an email's bytes are base64 of attachments that are
compressed already (PDF, JPEG, ZIP): Huffman coding takes base64 to about 76% as well as full
deflate does, at about a third of its CPU time (0.10 against 0.35 ms for the bench mailbox's
16 KB emails), and keeping originals must not cost more than 10% of ingest speed. Text-only mail
compresses less (the corpus: 70% against 25% with full level-1 deflate); set COMPRESS_STRATEGY
to zlib.Z_DEFAULT_STRATEGY to trade CPU for that.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import os
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import transaction
from django.http import Http404, StreamingHttpResponse
from django.utils import timezone

from records.models import DeskSettings, Original, ProcessedEmail

logger = logging.getLogger(__name__)

COMPRESS_LEVEL = 1
COMPRESS_STRATEGY = zlib.Z_HUFFMAN_ONLY
GZIP_WBITS = 31  # a gzip header and trailer around the deflate stream


class _Compressor:
    """A gzip stream written to a file object, a piece at a time."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.zlib = zlib.compressobj(
            COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS, 8, COMPRESS_STRATEGY
        )

    def write(self, data: bytes | memoryview) -> None:
        self.target.write(self.zlib.compress(data))

    def close(self) -> None:
        self.target.write(self.zlib.flush())


def compress(raw: bytes) -> bytes:
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS, 8, COMPRESS_STRATEGY)
    return compressor.compress(raw) + compressor.flush()


STREAM_CHUNK = 1024 * 1024
DIRECTORY = "originals"


@dataclass(frozen=True)
class StoredOriginal:
    """A compressed original written to storage, its row not created yet (picklable: the
    parse-ahead process hands it back)."""

    name: str
    size: int
    stored_size: int
    sha256: str
    received_at: datetime


def _name(received_at: datetime) -> str:
    return f"{DIRECTORY}/{received_at:%Y/%m/%d}/{uuid.uuid4().hex}.eml.gz"


def _make_private_directories(directory: str) -> None:
    """Create `directory` and its missing parents with the mode uploads get
    (FILE_UPLOAD_DIRECTORY_PERMISSIONS, 0700): os.makedirs gives the parents the process's
    umask, and the storage (under DATA_DIR by default) holds nothing others may read."""
    mode = settings.FILE_UPLOAD_DIRECTORY_PERMISSIONS or 0o700
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current) and current != os.path.dirname(current):
        missing.append(current)
        current = os.path.dirname(current)
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(path, mode)  # mkdir's mode is narrowed by the umask, never widened


def _save_small(name: str, data: bytes) -> str:
    """Write one small file. On the file system (the default), directly: the name is a new
    UUID, so Storage.save's search for a free name and its copying loop only cost time
    (they were more than half of the cost of keeping originals, bench row 1)."""
    if not isinstance(default_storage, FileSystemStorage):
        return default_storage.save(name, ContentFile(data))
    # The name is ours (a date and a UUID): joined without Storage.path's checks, which cost
    # as much as the write.
    path = os.path.join(default_storage.location, name)
    mode = settings.FILE_UPLOAD_PERMISSIONS or 0o600
    try:
        descriptor = os.open(path, _NEW_FILE, mode)
    except FileNotFoundError:  # the day's first email
        _make_private_directories(os.path.dirname(path))
        descriptor = os.open(path, _NEW_FILE, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
    return name


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def store_bytes(raw: bytes, *, received_at: datetime | None = None) -> StoredOriginal:
    """Compress and write one email held in memory."""
    received_at = received_at or timezone.now()
    if len(raw) > STREAM_CHUNK:
        # A large email is compressed a piece at a time into a temporary file: no second
        # copy of it in memory.
        view = memoryview(raw)
        with tempfile.TemporaryFile() as compressed:
            target = _Compressor(compressed)
            for start in range(0, len(raw), STREAM_CHUNK):
                target.write(view[start : start + STREAM_CHUNK])
            target.close()
            stored_size = compressed.tell()
            compressed.seek(0)
            name = default_storage.save(_name(received_at), File(compressed))
    else:
        data = compress(raw)
        stored_size = len(data)
        name = _save_small(_name(received_at), data)
    return StoredOriginal(
        name=name,
        size=len(raw),
        stored_size=stored_size,
        sha256=hashlib.sha256(raw).hexdigest(),
        received_at=received_at,
    )


def store_file(path: str, *, received_at: datetime | None = None) -> StoredOriginal:
    """Compress and write one email held in a file (an email over the size limit), a piece at
    a time: memory does not grow with its size."""
    received_at = received_at or timezone.now()
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as compressed:
        target = _Compressor(compressed)
        with open(path, "rb") as source:
            while piece := source.read(STREAM_CHUNK):
                digest.update(piece)
                size += len(piece)
                target.write(piece)
        target.close()
        stored_size = compressed.tell()
        compressed.seek(0)
        name = default_storage.save(_name(received_at), File(compressed))
    return StoredOriginal(
        name=name,
        size=size,
        stored_size=stored_size,
        sha256=digest.hexdigest(),
        received_at=received_at,
    )


def original_row(stored: StoredOriginal, *, integration_id: int | None) -> Original:
    return Original.objects.create(
        integration_id=integration_id,
        file=stored.name,
        size=stored.size,
        stored_size=stored.stored_size,
        sha256=stored.sha256,
        received_at=stored.received_at,
    )


def original_rows(
    stored: Sequence[StoredOriginal], *, integration_id: int | None
) -> list[Original]:
    """Rows of many originals at once (one INSERT: a chunk's emails, bench row 1)."""
    return Original.objects.bulk_create(
        [
            Original(
                integration_id=integration_id,
                file=each.name,
                size=each.size,
                stored_size=each.stored_size,
                sha256=each.sha256,
                received_at=each.received_at,
            )
            for each in stored
        ]
    )


def open_original(original: Original) -> IO[bytes]:
    """The email as it arrived, decompressed as it is read."""
    return gzip.GzipFile(fileobj=default_storage.open(original.file.name, "rb"), mode="rb")


def read_original(original: Original) -> bytes:
    with open_original(original) as stream:
        return stream.read()


def iter_original(original: Original) -> Iterator[bytes]:
    with open_original(original) as stream:
        while piece := stream.read(STREAM_CHUNK):
            yield piece


def original_response(original: Original, *, filename: str) -> StreamingHttpResponse:
    """The original as it arrived (decompressed while it is sent, never whole in memory),
    as a message/rfc822 download."""
    try:
        stream = iter_original(original)
        first = next(stream, b"")
    except (FileNotFoundError, OSError, ValueError):
        raise Http404("The original's file is missing.") from None
    response = StreamingHttpResponse(
        itertools.chain([first], stream), content_type="message/rfc822"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Content-Length"] = str(original.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def decompress(data: bytes) -> bytes:
    return zlib.decompress(data, wbits=31)


# Retention ---------------------------------------------------------------------------------

DELETE_BATCH = 1000


def retention_cutoff(now: datetime | None = None) -> datetime:
    days = DeskSettings.current().originals_retention_days
    return (now or timezone.now()) - timedelta(days=days)


def delete_expired(now: datetime | None = None) -> dict[str, int]:
    """Delete originals (rows and files) and incoming log rows older than the retention
    period of DeskSettings, and orphan files in day directories older than it.

    A log row is the processed marker of its email: it is deleted only when older than the
    retention period, when its email left the mailbox long ago (the pipeline acks an email
    right after the commit that wrote its row). An email still in a mailbox after that long
    (a server that failed to expunge) would be imported again once: the log then says so.
    """
    cutoff = retention_cutoff(now)
    deleted = {"originals": 0, "log_rows": 0, "files": 0}
    while True:
        batch = list(
            Original.objects.filter(received_at__lt=cutoff).values_list("pk", "file")[:DELETE_BATCH]
        )
        if not batch:
            break
        with transaction.atomic():
            Original.objects.filter(pk__in=[pk for pk, _name in batch]).delete()
        # Files after the rows: a crash in between leaves orphans (swept below), never a row
        # without its file.
        for _pk, name in batch:
            try:
                default_storage.delete(name)
                deleted["files"] += 1
            except OSError:
                logger.warning("could not delete original %s", name, exc_info=True)
        deleted["originals"] += len(batch)
    while True:
        pks = list(
            ProcessedEmail.objects.filter(processed_at__lt=cutoff).values_list("pk", flat=True)[
                :DELETE_BATCH
            ]
        )
        if not pks:
            break
        deleted["log_rows"] += ProcessedEmail.objects.filter(pk__in=pks).delete()[0]
    deleted["files"] += _sweep_orphans(cutoff)
    return deleted


def _sweep_orphans(cutoff: datetime) -> int:
    """Files of day directories wholly older than the cutoff whose row is gone (a crash
    between writing the file and the commit)."""
    removed = 0
    cutoff_day = cutoff.date()
    try:
        years, _files = default_storage.listdir(DIRECTORY)
    except (OSError, NotImplementedError):
        return 0
    for year in years:
        months, _files = default_storage.listdir(f"{DIRECTORY}/{year}")
        for month in months:
            days, _files = default_storage.listdir(f"{DIRECTORY}/{year}/{month}")
            for day in days:
                try:
                    date = datetime(int(year), int(month), int(day)).date()
                except ValueError:
                    continue
                if date >= cutoff_day:
                    continue
                folder = f"{DIRECTORY}/{year}/{month}/{day}"
                _dirs, files = default_storage.listdir(folder)
                names = [f"{folder}/{name}" for name in files]
                kept = set(Original.objects.filter(file__in=names).values_list("file", flat=True))
                for name in names:
                    if name not in kept:
                        default_storage.delete(name)
                        removed += 1
    return removed
