"""One pass at a time per mailbox: a lock per integration that dies with its holder.

Beat, a retried task, the IMAP IDLE listener and a manual `fetchmail` may all ask for a pass
over the same mailbox at once. Only the holder of the integration's lock reads the mailbox;
the others return at once (the holder is already importing what they would have imported).

The lock must be released when its holder dies, even by SIGKILL, or a crashed worker would
stop a mailbox for good:
- on PostgreSQL it is a session-level advisory lock, which the server drops with the
  holder's connection, wherever the other workers run;
- on SQLite (the embedded default, where every process runs on one machine beside the
  database file) it is an exclusive `flock` on a file under DATA_DIR, which the kernel drops
  with the holder's process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

# The first key of PostgreSQL's two-key advisory locks: our namespace, so other applications
# sharing the database never collide with integration ids.
ADVISORY_LOCK_NAMESPACE = 0x5D_0001


@contextmanager
def integration_lock(integration_id: int) -> Iterator[bool]:
    """Try to take the integration's lock without waiting; yield whether it was taken."""
    if connection.vendor == "postgresql":
        with _advisory_lock(integration_id) as taken:
            yield taken
    else:
        with _file_lock(lock_path(integration_id)) as taken:
            yield taken


@contextmanager
def _advisory_lock(integration_id: int) -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, integration_id]
        )
        taken = bool(cursor.fetchone()[0])
    try:
        yield taken
    finally:
        if taken:
            _release_advisory_lock(integration_id)


def _release_advisory_lock(integration_id: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, integration_id]
            )
    except Exception:
        # The connection is gone, and the server released the lock with it. A connection
        # that is still open but unusable must not keep the lock: close it.
        connection.close()


def lock_path(integration_id: int) -> Path:
    """One folder per database: desks (or test runs) sharing DATA_DIR but not their
    database have integrations with the same ids, which must not lock each other out."""
    database = str(connection.settings_dict["NAME"]).encode()
    folder = Path(settings.DATA_DIR) / "locks" / hashlib.sha256(database).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"integration-{integration_id}.lock"


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
