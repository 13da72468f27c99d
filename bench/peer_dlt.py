"""Benchmark: our job against dlt, the peer a user would pick instead, on the same data.

Both load the emulator's profiles (REST API) and email events (export files) into Delta
tables by MERGE on the same keys: a full load, then a 1% increment, then a run with nothing
new. Each run is its own process, timed whole (start to exit, as a scheduler sees it); in
each phase the two run one after the other against the same emulator state (the order
alternates from phase to phase), and the script prints the ratio per phase (dlt seconds /
our seconds: above 1, ours is faster). Row counts of both sides' tables are checked against
the emulator after every phase; a run that loaded the wrong data fails the benchmark.

The data: ``Dataset.generate(profiles=N)`` (default 1,000,000; email events are capped at
20,000 by the generator) served by the bundled emulator on loopback with no rate limit,
and its email events written as gzip CSV export files (4 per day, nested date folders).
The increment updates exactly 1% of the profiles (new ``update_since`` in the next day, new
city and lifecycle status) and appends 1% new email events as one new export file; the
emulator's ``advance_day`` is not used because it changes 3% (2% updated, 1% new).

Ours: ``jobs/ometria_sync.py --streams profiles,email_events`` with a config holding only
what a deployment must set, plus ``api.requests_per_second`` raised so that its client-side
throttle (4 req/s by default, Ometria's limit) does not hold it back against a server with
no limit (dlt has no throttle). Defaults otherwise: page size 250, lookback 60 minutes.

dlt (``bench/peer_dlt_pipeline.py``; its docstring has every detail): dlt 1.31's
``rest_api`` resources on ``/profiles`` (offset paginator, limit 250, incremental on
``update_since`` sent as ``updateSince``, ``merge`` on ``id``) and the ``filesystem``
source (incremental on file modification time) piped into a ``csv`` reader for the export
files (``merge`` on ``to_address``, ``event_type``, ``dt_occurred``, the fields our key
hashes), destination ``filesystem`` with ``table_format="delta"`` (delta-rs upsert MERGE),
dlt's defaults otherwise (nested lists become child tables, as dlt does).

The table is appended to ``bench/results.md``. dlt is a benchmark-only dependency: install
the ``bench`` extra (``make bench`` does). Not a test:
``.venv/bin/python bench/peer_dlt.py [--profiles 1000000] [--no-record]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from deltalake import DeltaTable

from ometria_spark.config import ApiConfig
from ometria_spark.emulator import Dataset, EmulatorServer, export_files, write_local
from ometria_spark.emulator.dataset import DAY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append  # bench/ is not a package

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-peer-dlt"
KEY_ENV = "OMETRIA_BENCH_KEY"
EVENT_KEY = ("to_address", "event_type", "dt_occurred")
SIDES = ("ours", "dlt")


@dataclass
class Expected:
    """What the emulator holds after a phase: both sides' tables must match it."""

    profiles: int
    email_events: int
    recent_profiles: int  # profiles updated at or after the increment's day


@dataclass
class Run:
    """One timed process."""

    seconds: float
    detail: str


@dataclass
class Phase:
    name: str
    rows: int  # records new or changed at the source in this phase
    runs: dict[str, Run] = field(default_factory=dict)


def expected(ds: Dataset, recent: str) -> Expected:
    """Row counts the tables must have: distinct profile ids, distinct event keys."""
    with ds.lock:
        events = {tuple(e.get(k) for k in EVENT_KEY) for e in ds.email_events}
        return Expected(
            profiles=len({p["id"] for p in ds.profiles}),
            email_events=len(events),
            recent_profiles=sum(1 for p in ds.profiles if p["update_since"] >= recent),
        )


def increment(ds: Dataset, exports: Path, rng: random.Random) -> int:
    """Move the emulator one day on with exactly 1% of profiles updated and 1% new events
    (written as one new export file); return the number of records changed."""
    with ds.lock:
        day_start = ds.now.timestamp()
        ds.now += timedelta(days=1)

        def in_day() -> float:
            return day_start + rng.random() * (DAY - 1)

        count = len(ds.profiles)
        changed = max(1, count // 100)
        for i in rng.sample(range(count), changed):
            ds.profiles[i] = ds._updated_profile(ds.profiles[i], in_day())
        new_events = [ds._new_event(in_day()) for _ in range(max(1, len(ds.email_events) // 100))]
        new_events.sort(key=itemgetter("dt_occurred"))
        ds.email_events.extend(new_events)
        ds.email_events.sort(key=itemgetter("dt_occurred"))
        ds.version += 1
    # One file for the new day's events; earlier days' folders are left as they were.
    write_local(exports, export_files(new_events, files=1))
    return changed + len(new_events)


def write_config(work: Path, base_url: str, exports: Path, page_size: int) -> Path:
    """Our job's config: a local deployment against the emulator."""
    config = work / "ours.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "account_id": "bench",
                "source_id": "bench",
                "api": {
                    "base_url": base_url,
                    "key_env": KEY_ENV,
                    "page_size": page_size,
                    # No server-side limit here and dlt has no throttle: do not hold ours to
                    # Ometria's 4 req/s either.
                    "requests_per_second": 1_000_000.0,
                },
                "exports": {"email_events_path": str(exports), "format": "csv"},
                "storage": {
                    "raw_path": str(work / "ours" / "raw"),
                    "tables_path": str(work / "ours" / "tables"),
                },
                "sync": {"streams": ["profiles", "email_events"]},
            }
        ),
        encoding="utf-8",
    )
    return config


def run_process(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[float, str]:
    """Wall seconds and stdout of one process; its output is kept in ``log``; fails loudly."""
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    log.write_text(f"$ {' '.join(cmd)}\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    if result.returncode != 0:
        raise SystemExit(
            f"{cmd[1]} exited {result.returncode} (log: {log}):\n"
            f"{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
        )
    return seconds, result.stdout


def ours_detail(stdout: str) -> str:
    """``profiles read/ins/upd, email_events ...`` from the job's summary table."""
    parts = []
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) >= 7 and cells[0] in ("profiles", "email_events"):
            parts.append(f"{cells[0]} {cells[1]} read {cells[4]} ins {cells[5]} upd {cells[6]}")
    return "; ".join(parts)


def dlt_detail(stdout: str) -> str:
    """``rows {...}; extract s, normalize s, load s`` from the pipeline's JSON line."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return "?"
    report: dict[str, Any] = json.loads(lines[-1])
    rows = {k: v for k, v in report["rows"].items() if not k.startswith("_dlt")}
    steps = report.get("steps", {})
    timing = ", ".join(
        f"{s} {steps[s]:.1f}s" for s in ("extract", "normalize", "load") if s in steps
    )
    return f"rows {rows or 'none'}; {timing}"


def ours_breakdown(tables: Path, phase_started: float, wall: float) -> str:
    """When each stream of our last run was done, counted from the run's start, and how much
    of the process lay outside the sync (JVM and session start, lock, exit), from the run's
    ``_sync_runs`` rows."""
    try:
        runs = DeltaTable(str(tables / "_sync_runs")).to_pyarrow_table().to_pylist()
    except Exception as exc:  # the breakdown is a nicety; the timing stands without it
        return f"(no _sync_runs: {type(exc).__name__})"
    latest = [r for r in runs if r["started_at"].timestamp() >= phase_started - 1]
    if not latest:
        return "(no _sync_runs rows)"
    start = min(r["started_at"] for r in latest)
    done = sorted(latest, key=itemgetter("ended_at"))
    sync = (done[-1]["ended_at"] - start).total_seconds()
    streams = ", ".join(
        f"{r['stream']} +{(r['ended_at'] - start).total_seconds():.1f}s" for r in done
    )
    return f"done at {streams}; outside the sync {wall - sync:.1f}s"


def count_rows(path: Path) -> int:
    return int(DeltaTable(str(path)).to_pyarrow_dataset().count_rows())


def count_since(path: Path, column: str, since: datetime) -> int:
    """Rows of a table whose ``column`` (a timestamp, or ISO text) is at or after ``since``."""
    values = DeltaTable(str(path)).to_pyarrow_table(columns=[column]).column(column)
    if pa.types.is_timestamp(values.type):
        bound = pa.scalar(since, type=values.type)
    else:
        bound = pa.scalar(since.isoformat())
    return int(pc.sum(pc.greater_equal(values, bound)).as_py() or 0)


def our_counts(ours: Path, since: datetime) -> tuple[int, int, int]:
    """Our tables read by Spark: they have deletion vectors, which ``deltalake`` (delta-rs
    1.6) does not read. The session is started once, outside the timed processes."""
    from pyspark.sql import functions as F

    from ometria_spark.spark import get_spark

    spark = get_spark("peer-dlt-verify", s3a=False)
    profiles = spark.read.format("delta").load(str(ours / "profiles"))
    events = spark.read.format("delta").load(str(ours / "email_events"))
    recent = profiles.where(F.col("updated_at") >= F.lit(since)).count()
    return profiles.count(), events.count(), recent


def verify(phase: str, want: Expected, ours: Path, theirs: Path, since: datetime) -> None:
    """Both sides' tables hold what the emulator holds; else stop the benchmark."""
    got = {
        "ours": our_counts(ours, since),
        "dlt": (
            count_rows(theirs / "profiles"),
            count_rows(theirs / "email_events"),
            count_since(theirs / "profiles", "update_since", since),
        ),
    }
    target = (want.profiles, want.email_events, want.recent_profiles)
    for side, counts in got.items():
        if counts != target:
            raise SystemExit(
                f"{phase}: {side}'s tables hold (profiles, email_events, profiles updated in "
                f"the increment's day) = {counts}, the emulator {target}"
            )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles in the data")
    parser.add_argument("--page-size", type=int, default=ApiConfig().page_size)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", help="where to put files and tables (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-record", action="store_true", help="do not append the table to bench/results.md"
    )
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="peer-dlt-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    exports, logs = work / "exports", work / "logs"
    logs.mkdir(exist_ok=True)
    ours_tables, dlt_tables = work / "ours" / "tables", work / "dlt" / "tables" / "ometria"

    load_at_start = os.getloadavg()[0]
    started = time.monotonic()
    ds = Dataset.generate(seed=args.seed, profiles=args.profiles)
    generated = time.monotonic() - started
    write_local(exports, export_files(ds.email_events))
    events_at_start = len(ds.email_events)
    print(
        f"{args.profiles:,} profiles and {events_at_start:,} email events generated in "
        f"{generated:.1f}s, export files written in {time.monotonic() - started - generated:.1f}s"
        f"; work directory {work}",
        flush=True,
    )
    # Profiles updated from this instant on are the increment's; none before it.
    recent_since = ds.now
    recent = recent_since.isoformat()
    rng = random.Random(args.seed + 1)

    env = {
        **os.environ,
        KEY_ENV: KEY,
        "RUNTIME__DLTHUB_TELEMETRY": "false",  # no network here; never wait on it
        "PYTHONUNBUFFERED": "1",
    }
    phases: list[Phase] = []
    with EmulatorServer(ds, api_key=KEY) as server:
        config = write_config(work, server.url, exports, args.page_size)
        commands = {
            "ours": [
                sys.executable,
                str(ROOT / "jobs" / "ometria_sync.py"),
                "--config",
                str(config),
                "--streams",
                "profiles,email_events",
            ],
            "dlt": [
                sys.executable,
                str(ROOT / "bench" / "peer_dlt_pipeline.py"),
                "--base-url",
                server.url,
                "--key-env",
                KEY_ENV,
                "--exports",
                str(exports),
                "--destination",
                str(work / "dlt" / "tables"),
                "--pipelines-dir",
                str(work / "dlt" / "pipelines"),
                "--page-size",
                str(args.page_size),
            ],
        }
        plan = ("full", "increment 1%", "nothing new")
        for number, name in enumerate(plan):
            if name == "full":
                rows = len(ds.profiles) + len(ds.email_events)
            elif name.startswith("increment"):
                rows = increment(ds, exports, rng)
            else:
                rows = 0
            want = expected(ds, recent)
            phase = Phase(name, rows)
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            for side in order:
                log = logs / f"{number}-{name.split()[0]}-{side}.log"
                phase_started = time.time()
                cwd = ROOT if side == "ours" else work
                seconds, stdout = run_process(commands[side], env, cwd, log)
                detail = ours_detail(stdout) if side == "ours" else dlt_detail(stdout)
                if side == "ours":
                    detail += f"; {ours_breakdown(ours_tables, phase_started, seconds)}"
                phase.runs[side] = Run(seconds, detail)
                print(f"  {name:<13} {side:<4} {seconds:7.1f}s  {detail}", flush=True)
            verify(name, want, ours_tables, dlt_tables, recent_since)
            phases.append(phase)

    lines = table(args.profiles, events_at_start, args.page_size, phases)
    # Other processes on the machine skew whole-process timings: say how busy it was.
    lines.append(
        f"1-minute load average at start {load_at_start:.1f}, at end {os.getloadavg()[0]:.1f} "
        f"({os.cpu_count()} CPUs); whole benchmark {time.monotonic() - started:.0f}s"
    )
    print()
    print("\n".join(lines))
    if not args.no_record:
        append(f"peer_dlt.py --profiles {args.profiles}", lines)
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def table(profiles: int, events: int, page_size: int, phases: list[Phase]) -> list[str]:
    """The printed (and recorded) result: one row per phase, then the targets."""

    def rate(rows: int, seconds: float) -> str:
        return f"{rows / seconds:,.0f}" if rows else "-"

    lines = [
        f"ours (jobs/ometria_sync.py) vs dlt 1.31 (rest_api + filesystem -> Delta, merge); "
        f"{profiles:,} profiles, {events:,} email events at the start; page size {page_size}; "
        "whole-process wall time",
        f"{'phase':<13} {'ours s':>8} {'dlt s':>8} {'rows':>10} {'ours rows/s':>12} "
        f"{'dlt rows/s':>11} {'ratio':>6}",
    ]
    for p in phases:
        ours, theirs = p.runs["ours"].seconds, p.runs["dlt"].seconds
        lines.append(
            f"{p.name:<13} {ours:>8.1f} {theirs:>8.1f} {p.rows:>10,} {rate(p.rows, ours):>12} "
            f"{rate(p.rows, theirs):>11} {theirs / ours:>6.2f}"
        )
    lines.append("ratio = dlt seconds / our seconds (= our rows/s / dlt rows/s); > 1: ours faster")
    by_name = {p.name.split()[0]: p for p in phases}
    full, inc = by_name["full"], by_name["increment"]
    full_ratio = full.runs["dlt"].seconds / full.runs["ours"].seconds
    inc_ratio = inc.runs["ours"].seconds / inc.runs["dlt"].seconds
    lines.append(
        f"target full load: ours rows/s >= 2.5x dlt's: {full_ratio:.2f}x, "
        f"{'met' if full_ratio >= 2.5 else 'NOT met'}"
    )
    lines.append(
        f"target 1% increment: ours wall time <= 1.5x dlt's: {inc_ratio:.2f}x, "
        f"{'met' if inc_ratio <= 1.5 else 'NOT met'}"
    )
    return lines


if __name__ == "__main__":
    main()
