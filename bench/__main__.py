"""`python -m bench`: every suite, then one table (also bench/results/<time>.json)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.environment import (
    PROJECT_ROOT,
    backends,
    create_backend,
    drop_backend,
    suite_environment,
)

RESULTS = PROJECT_ROOT / "bench" / "results"
# Rows whose result depends on the database (the others run in the first suite only).
PER_DATABASE = ("ingest", "outbound", "screens", "many-mailboxes", "big-mailbox")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def run_suites(options: argparse.Namespace, passthrough: list[str]) -> list[dict[str, Any]]:
    database_url = os.environ.get("DATABASE_URL", "")
    results: list[dict[str, Any]] = []
    chosen = backends(database_url)
    if options.databases:
        wanted = options.databases.split(",")
        unknown = sorted(set(wanted) - set(chosen))
        if unknown:
            raise SystemExit(
                f"--databases {options.databases}: {', '.join(unknown)} not available here "
                f"(available: {', '.join(chosen)}; PostgreSQL needs DATABASE_URL)"
            )
        chosen = [name for name in chosen if name in wanted]
    for number, name in enumerate(chosen):
        backend = create_backend(name, database_url=database_url)
        try:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, "-m", "bench.suite", "--backend", name]
                command += ["--out", out.name, *passthrough]
                if number == 0:
                    command.append("--primary")
                subprocess.run(
                    command, cwd=PROJECT_ROOT, env=suite_environment(backend), check=True
                )
                results.extend(json.loads(Path(out.name).read_text()))
        finally:
            drop_backend(backend, database_url=database_url)
    return results


def table(results: list[dict[str, Any]]) -> str:
    header = ("Row", "Database", "Result", "Target", "Met")
    lines = [
        (
            row["name"],
            row["backend"] if row["key"] in PER_DATABASE else "-",
            row["result"],
            row["target"] or "",
            "" if row["met"] is None else ("yes" if row["met"] else "NO"),
        )
        for row in results
    ]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]

    def format_line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([format_line(header), rule, *(format_line(cells) for cells in lines)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Benchmarks of servicedesk on real servers on loopback. Other options "
        "(--emails, --records, --memory-emails, --memory-mb, --notifications, --rows, "
        "--profile; for the opt-in rows many-mailboxes and big-mailbox: --mailboxes, "
        "--mailbox-emails, --poll-interval, --big-emails, --small-mailboxes) go to each suite."
    )
    parser.add_argument(
        "--databases",
        help="Only these of the suites' databases, comma-separated (sqlite,postgresql): "
        "the full-scale many-mailbox rows take minutes on each.",
    )
    options, passthrough = parser.parse_known_args()
    started = time.monotonic()
    info = machine()
    results = run_suites(options, passthrough)
    info["load_average_at_end"] = os.getloadavg()
    output = table(results)
    print()
    print(output)
    print(
        f"\n{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Python "
        f"{info['python']}; load average at start {info['load_average_at_start'][0]:.1f}, "
        f"at end {info['load_average_at_end'][0]:.1f}; {time.monotonic() - started:.0f} s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(
        json.dumps(
            {"machine": info, "arguments": passthrough, "rows": results, "table": output},
            indent=2,
            default=str,
        )
    )
    print(f"Written to {path.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
