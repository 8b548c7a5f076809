"""The rows of the bench table. A row is a function `(bench) -> Row`; ROWS lists them in
the order they run and print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.suite import Bench


@dataclass
class Row:
    name: str
    result: str  # as printed, e.g. "412 emails/s (4.85 s)"
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RowFunction = Callable[["Bench"], list[Row]]


def all_rows() -> list[tuple[str, RowFunction]]:
    """(key, function) in order; the key selects rows on the command line (--rows)."""
    from bench.rows import graph, idle, incoming_log, ingest, many, memory, outbound, screens

    return [
        ("ingest", ingest.ingest_and_limit),
        ("graph", graph.graph_ingest),
        ("memory", memory.peak_rss),
        ("outbound", outbound.send_notifications),
        ("idle", idle.idle_latency),
        ("screens", screens.screen_times),
        ("incoming-log", incoming_log.incoming_log_times),
        ("many-mailboxes", many.many_mailboxes),
        ("big-mailbox", many.big_mailbox),
    ]


# Rows that take minutes at full scale: run only when named in --rows.
OPT_IN = {"many-mailboxes", "big-mailbox"}
