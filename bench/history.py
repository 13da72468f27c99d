"""Benchmark: does an hourly run get slower as history piles up? A no-change sync after a
year of hourly runs against the same sync after 10 runs, whole process, side by side.

Two warehouses are filled by one real sync of the same emulated account (four API streams
and the email-event exports). Then each gets a history, written as the job leaves it:
per API stream, merged pulls (plan, ``_merged`` marker, index entry) one hour apart, and
export files already loaded (a one-line CSV each, recorded in ``_loaded_files``). "ten"
gets 10 of each; "year" gets 8,760 pulls per stream and 20,000 export files. Retention is
set long enough to keep them all (the hard case: with the default of 7 days, a year leaves
168 pulls per stream). No-change runs of both alternate; the medians are compared.

Not a test: ``.venv/bin/python bench/history.py [--runs 3] [--pulls 8760 --files 20000]``.
What it does not reproduce: the Delta logs of a year of commits (each table's log is read
from its last checkpoint, and log files older than ``delta.logRetentionDuration``, 30 days,
are cleaned at checkpoints).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ometria_spark.emulator import Dataset, EmulatorServer
from ometria_spark.emulator.exports import export_files, write_local

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import KEY_ENV, job, timed, write_config
from record import append

KEY = "bench-key-history"
API_STREAMS = ["lists", "profiles", "member_lists", "unsubscribes"]
HEADER = "event_id,to_address,event_type,dt_occurred\n"


def add_history(work: Path, config: Path, pulls: int, files: int, now: datetime) -> None:
    """Merged pulls and loaded export files, as ``pulls`` hourly runs before ``now`` leave
    them (one process with Spark, for ``_loaded_files``)."""
    from ometria_spark.config import load_config
    from ometria_spark.exports import discover, record_loaded
    from ometria_spark.landing import Landing, Plan, Request
    from ometria_spark.spark import get_spark
    from ometria_spark.state import LOADED_FILES_TABLE, table_ref
    from ometria_spark.storage import storage_for
    from ometria_spark.sync import new_run_id

    cfg = load_config(config)
    landing = Landing(cfg.storage.raw_path, storage_for(cfg.storage.raw_path))
    for stream in API_STREAMS:
        for hour in range(pulls, 0, -1):
            plan = Plan(
                stream, new_run_id(now - timedelta(hours=hour + 1)), 250, (Request(stream),)
            )
            landing.save_plan(plan)
            landing.mark_merged(plan)
    exports = Path(str(cfg.exports.email_events_path))
    old = now - timedelta(days=400)
    for n in range(files):
        day = old + timedelta(hours=n)
        path = exports / f"{day:%Y/%m/%d}" / f"history_{n:06d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{HEADER}h{n},h{n}@example.com,send,{day:%Y-%m-%d %H:%M:%S}\n")
    spark = get_spark("bench-history")
    history = [f for f in discover(spark, str(exports)) if "/history_" in f.path]
    loaded = table_ref(cfg, LOADED_FILES_TABLE, register=False)
    record_loaded(spark, loaded, [(f, 1) for f in history], run_id="history", loaded_at=now)
    spark.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed no-change runs of each")
    parser.add_argument("--pulls", type=int, default=8760, help="pulls per stream of 'year'")
    parser.add_argument("--files", type=int, default=20000, help="export files of 'year'")
    parser.add_argument("--profiles", type=int, default=500)
    parser.add_argument(
        "--full-listing-hours", type=float, default=24.0,
        help="exports.full_listing_hours of both configs (0: list the export root whole)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    env = {**os.environ, KEY_ENV: KEY}
    now = datetime.now(UTC)
    sizes = {"ten": (10, 10), "year": (args.pulls, args.files)}
    with (
        tempfile.TemporaryDirectory(prefix="ometria-history-") as tmp,
        EmulatorServer(
            Dataset.generate(profiles=args.profiles, start=now - timedelta(hours=1)),
            requests_per_second=50,
            api_key=KEY,
        ) as server,
    ):
        configs = {}
        for name, (pulls, files) in sizes.items():
            work = Path(tmp) / name
            exports = work / "exports"
            write_local(exports, export_files(server.dataset.email_events, files=1))
            configs[name] = write_config(
                work, server.url, streams=[*API_STREAMS, "email_events"], exports=str(exports),
                extra={
                    "storage": {"raw_retention_days": 400},
                    "exports": {"full_listing_hours": args.full_listing_hours},
                },
            )  # fmt: skip
            timed(job(configs[name]), env)  # the real first sync
            add_history(work, configs[name], pulls, files, now)
        times: dict[str, list[float]] = {name: [] for name in sizes}
        for _ in range(args.runs):
            for name in sizes:
                times[name].append(timed(job(configs[name]), env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        f"no-change sync (four API streams, {args.profiles} profiles, and email_events), "
        f"whole process, local disk, exports.full_listing_hours {args.full_listing_hours:g}, "
        f"medians of {args.runs} alternating runs",
        f"{'history':<44} {'seconds':>8}",
        f"{'after 10 runs (10 pulls/stream, 10 files)':<44} {medians['ten']:>8.1f}",
        f"{f'after a year ({args.pulls} pulls/stream, {args.files} files)':<44} "
        f"{medians['year']:>8.1f}",
        f"ratio year / ten: {medians['year'] / medians['ten']:.2f} (target <= 1.15)",
        *(
            f"{name} runs: {', '.join(f'{s:.1f}' for s in values)} s"
            for name, values in times.items()
        ),
    ]
    print("\n".join(lines))
    append("History: a no-change run after a year of hourly runs (bench/history.py)", lines)


if __name__ == "__main__":
    main()
