"""Shared by the benchmark scripts: append one script's figures to ``bench/results.md``.

Each entry carries the date, the commit and the machine (CPU count, memory), so figures
from different days and machines are never read as one series.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def machine() -> str:
    """``2 CPUs, 24.0 GiB`` for this machine (Linux ``/proc/meminfo``; else CPUs only)."""
    cpus = os.cpu_count() or 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            kib = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
        return f"{cpus} CPUs, {kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return f"{cpus} CPUs"


def commit() -> str:
    """The short commit of the working tree, ``+dirty`` when it has uncommitted changes."""
    root = RESULTS.parent.parent

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


BENCH_INTRO = (
    "# Benchmark results\n\nAppended by the scripts in `bench/` (`make bench`); newest last.\n\n"
)


def append(
    title: str,
    lines: list[str],
    results: Path = RESULTS,
    *,
    intro: str = BENCH_INTRO,
    command: str | None = None,
) -> None:
    """Append a section ``title`` holding ``lines`` (the printed table) to the results file
    (started with ``intro`` if new), after the ``command`` that printed them if given."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"## {title}", "", f"{stamp} · commit {commit()} · {machine()}", ""]
    if command:
        block += [f"`{command}`", ""]
    block += ["```", *lines, "```", ""]
    if not results.exists():
        results.write_text(intro, encoding="utf-8")
    with results.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(block) + "\n")
