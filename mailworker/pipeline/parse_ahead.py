"""Parsing the next chunk of emails in a second process while this one writes the current
chunk to the database.

Parsing (MIME, headers, HTML sanitising) is about a third of what importing an email costs
and needs no database, so on a machine with two or more cores it runs beside the writes
instead of before them. The second process is forked per pass and gets only raw bytes; it
returns what `parse_email` made, or the traceback of what it raised (exceptions of any
library may not survive pickling; the text is what the quarantine keeps anyway).

A Celery prefork pool child is "daemonic", and multiprocessing refuses children to
those (they could be orphaned when their parent is killed). Our child lives only for one
pass, is shut down when the pass ends, and dies with its parent (PR_SET_PDEATHSIG on
Linux), so the refusal does not apply: the flag is lifted while the child is started.
Where a process still cannot be started (a container that forbids fork), parsing happens in
this process, as it always may.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings

from mailworker.inbound import InboundEmail
from mailworker.parsing import parse_email
from records.originals import StoredOriginal, store_pack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parsed:
    """parse_email's result, or the traceback of what it raised (then the email is
    quarantined with it)."""

    email: InboundEmail | None
    failure: str = ""
    # The original, compressed and written to storage here (beside the previous chunk's
    # writes); its row is created in the email's transaction (records/originals.py).
    stored: StoredOriginal | None = None
    store_failure: str = ""


def parse(raw: bytes, *, keep_original: bool = False) -> Parsed:
    """One email parsed, and its original stored when `keep_original`."""
    return parse_all([raw], [keep_original])[0]


def _parsed(raw: bytes, stored: StoredOriginal | None, store_failure: str) -> Parsed:
    try:
        return Parsed(parse_email(raw), stored=stored, store_failure=store_failure)
    except Exception:  # the email is quarantined with this traceback, never dropped
        return Parsed(
            None, traceback.format_exc(limit=8), stored=stored, store_failure=store_failure
        )


def parse_all(raws: Sequence[bytes], keep: Sequence[bool] | None = None) -> list[Parsed]:
    """Parse a chunk and store the originals of those with `keep` (default: all) in one pack
    (records/originals.py). `keep` is false for the header block of an email over the size
    limit (its whole original is streamed to storage by the pass) and for an email whose
    original is kept already."""
    keep = [True] * len(raws) if keep is None else list(keep)
    kept = [index for index, each in enumerate(keep) if each]
    stored: dict[int, StoredOriginal] = {}
    store_failure = ""
    if kept:
        try:
            stored = dict(zip(kept, store_pack([raws[index] for index in kept]), strict=True))
        except Exception:  # storage full or unwritable: the chunk is not acked (process.py)
            store_failure = traceback.format_exc(limit=8)
    return [
        _parsed(raw, stored.get(index), store_failure if keep[index] else "")
        for index, raw in enumerate(raws)
    ]


@dataclass(frozen=True)
class Parsing:
    """A chunk handed to the parser: its bytes, and the parse under way (or done here)."""

    raws: list[bytes]
    future: Future
    keep: list[bool] | None = None


def _done(value: list[Parsed]) -> Future:
    """A result computed in this process, with the interface of the pool's futures."""
    future: Future = Future()
    future.set_result(value)
    return future


def _die_with_parent() -> None:
    """Runs in the child: the kernel kills it when the pass's process dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child ends with the pass as usual
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


PR_SET_PDEATHSIG = 1


@contextmanager
def _children_allowed() -> Iterator[None]:
    """Lift multiprocessing's "daemonic processes may not have children" while the parse
    process starts (see the module docstring for why that is safe here)."""
    config = multiprocessing.current_process()._config  # noqa: SLF001 - no public setter
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon
        else:
            config.pop("daemon", None)


class Parser:
    """Submits chunks to the second process when there is one, else parses them here."""

    def __init__(self, pool: ProcessPoolExecutor | None) -> None:
        self.pool = pool

    def submit(
        self, raws: list[bytes], keep: list[bool] | None = None, *, here: bool = False
    ) -> Parsing:
        """`here`: parse in this process now (a batch's first chunk: nothing is written
        meanwhile, and a pass of one chunk then never starts the second process)."""
        if self.pool is not None and not here:
            try:
                with _children_allowed():  # the pool starts its process on a submit
                    return Parsing(raws, self.pool.submit(parse_all, raws, keep), keep)
            except Exception:  # the process died or could not start: parse here from now on
                logger.warning("parsing in a second process failed; parsing here", exc_info=True)
                self.pool = None
        return Parsing(raws, _done(parse_all(raws, keep)), keep)

    def result(self, parsing: Parsing) -> list[Parsed]:
        try:
            return parsing.future.result()
        except Exception:  # BrokenProcessPool (the child was killed), pickling: parse here
            logger.warning("parsing in a second process failed; parsing here", exc_info=True)
            self.pool = None
            return parse_all(parsing.raws, parsing.keep)


def parse_processes() -> int:
    configured = settings.INGEST_PARSE_PROCESSES
    if configured is not None:
        return configured
    return 1 if (os.cpu_count() or 1) > 1 else 0


@contextmanager
def parser() -> Iterator[Parser]:
    """A Parser for one pass: with a forked process when the machine has a core to spare."""
    pool = None
    if parse_processes() > 0:
        try:
            pool = ProcessPoolExecutor(
                max_workers=parse_processes(),
                mp_context=multiprocessing.get_context("fork"),
                initializer=_die_with_parent,
            )
        except Exception:
            logger.info("cannot start a process to parse in; parsing here", exc_info=True)
    try:
        yield Parser(pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
