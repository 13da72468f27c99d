"""Benchmark: does an hourly run get slower as history piles up? A no-change sync after a
year of hourly runs against the same sync after 10 runs, whole process, side by side, on
local disk and on an S3-compatible server (moto, on loopback), with storage requests counted.

Two warehouses per store are filled by one real sync of the same emulated account (four API
streams and the email-event exports). Then each gets a history, written as the job leaves
it: per API stream, merged pulls (plan, ``_merged`` marker, index entry) one hour apart, and
export files already loaded (a one-line CSV each, recorded in ``_loaded_files``). "ten" gets
10 of each; "year" gets 8,760 pulls per stream and 20,000 export files. Retention is set long
enough to keep them all (the hard case: with the default of 7 days, a year leaves 168 pulls
per stream). No-change runs of both alternate; the medians are compared.

Storage requests: on S3, every request the run makes to the server (boto3 in the driver and
S3A in the JVM), by kind. Locally, the file-system calls of the job's Python side below the
warehouse (``bench/counted_job.py``: the landing zone, its index, export discovery); the
JVM's own reads of Delta logs and Parquet are not counted there.

On S3 each warehouse has a bucket per root (raw pages, tables, exports): moto lists a
prefix by walking the whole bucket, which real S3 does not, so one shared bucket would
charge the tables' listings for the landing zone's size.

Not a test: ``.venv/bin/python bench/history.py [--runs 3] [--stores local,s3]
[--pulls 8760 --files 20000]``. What it does not reproduce: the Delta logs of a year of
commits (each table's log is read from its last checkpoint, and log files older than
``delta.logRetentionDuration``, 30 days, are cleaned at checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

from ometria_spark.emulator import Dataset, EmulatorServer
from ometria_spark.emulator.exports import export_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import JOB, KEY_ENV, write_config
from record import append
from s3_server import CREDENTIALS, CountingS3Server

KEY = "bench-key-history"
API_STREAMS = ["lists", "profiles", "member_lists", "unsubscribes"]
HEADER = "event_id,to_address,event_type,dt_occurred\n"
COUNTER = Path(__file__).resolve().parent / "counted_job.py"


@dataclass
class Run:
    seconds: float
    requests: Counter[str]  # by kind
    server: dict[str, float] = field(default_factory=dict)  # S3: seconds by bucket and kind


@dataclass
class Warehouse:
    """One warehouse of one store: its config, and how to put a file under its roots."""

    name: str
    config: Path
    root: str  # what the local counts are limited to
    put: Callable[[str, str, bytes], None]  # (root: "raw" | "exports", relative path, data)
    s3: CountingS3Server | None = None
    runs: list[Run] = field(default_factory=list)


def local_warehouse(work: Path, name: str, url: str, listing_hours: float) -> Warehouse:
    roots = {"raw": work / "raw", "exports": work / "exports"}

    def put(root: str, relative: str, data: bytes) -> None:
        path = roots[root] / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    config = write_config(
        work, url, streams=[*API_STREAMS, "email_events"], exports=str(roots["exports"]),
        extra={
            "storage": {"raw_retention_days": 400},
            "exports": {"full_listing_hours": listing_hours},
        },
    )  # fmt: skip
    return Warehouse(name, config, str(work), put)


def s3_warehouse(
    work: Path, name: str, url: str, listing_hours: float, s3: CountingS3Server
) -> Warehouse:
    buckets = {root: f"history-{name}-{root}" for root in ("raw", "tables", "exports")}
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1")
    for bucket in buckets.values():
        client.create_bucket(Bucket=bucket)

    def put(root: str, relative: str, data: bytes) -> None:
        s3.put(buckets[root], f"{root}/{relative}", data)

    config = write_config(
        work, url, streams=[*API_STREAMS, "email_events"],
        exports=f"s3a://{buckets['exports']}/exports",
        extra={
            "storage": {
                "raw_path": f"s3a://{buckets['raw']}/raw",
                "tables_path": f"s3a://{buckets['tables']}/tables",
                "s3_endpoint": s3.url,
                "raw_retention_days": 400,
            },
            "exports": {"full_listing_hours": listing_hours, "s3_endpoint": s3.url},
        },
    )  # fmt: skip
    return Warehouse(name, config, str(work), put, s3)


def run_job(warehouse: Warehouse, env: dict[str, str], work: Path) -> Run:
    """One sync: its wall seconds and storage requests (fails loudly unless it exits 0)."""
    counts_file = work / f"counts-{warehouse.name}.json"
    cmd = [sys.executable, str(COUNTER), warehouse.root, str(counts_file), str(JOB)]
    if warehouse.s3:
        warehouse.s3.reset_counts()
    started = time.monotonic()
    result = subprocess.run(
        [*cmd, "--config", str(warehouse.config)], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{warehouse.name} exited {result.returncode}:\n{result.stderr[-3000:]}")
    if warehouse.s3:
        return Run(seconds, *warehouse.s3.reset_counts())
    return Run(seconds, Counter(json.loads(counts_file.read_text(encoding="utf-8"))))


def add_history(warehouse: Warehouse, pulls: int, files: int, now: datetime) -> None:
    """Merged pulls and loaded export files, as ``pulls`` hourly runs before ``now`` leave
    them. Pulls are written by the job's own ``Landing`` into a local folder and copied."""
    from ometria_spark.config import load_config
    from ometria_spark.exports import discover, record_loaded
    from ometria_spark.landing import Landing, Plan, Request
    from ometria_spark.spark import get_spark, s3a_conf
    from ometria_spark.state import LOADED_FILES_TABLE, table_ref
    from ometria_spark.storage import LocalStorage
    from ometria_spark.sync import new_run_id

    cfg = load_config(warehouse.config)
    with tempfile.TemporaryDirectory(prefix="ometria-history-pulls-") as stage:
        landing = Landing(stage, LocalStorage())
        for stream in API_STREAMS:
            for hour in range(pulls, 0, -1):
                started = now - timedelta(hours=hour + 1)
                plan = Plan(stream, new_run_id(started), 250, (Request(stream),))
                landing.save_plan(plan)
                landing.mark_merged(plan)
        for path in Path(stage).rglob("*"):
            if path.is_file() and path.name != "_indexed":
                warehouse.put("raw", str(path.relative_to(stage)), path.read_bytes())
    for n in range(files):  # spread over the year before the first sync
        day = now - timedelta(days=366) + timedelta(days=365) * n / files
        line = f"h{n},h{n}@example.com,send,{day:%Y-%m-%d %H:%M:%S}\n"
        warehouse.put("exports", f"{day:%Y/%m/%d}/history_{n:06d}.csv", (HEADER + line).encode())
    spark = get_spark("bench-history", hadoop_conf=s3a_conf(cfg))
    root = str(cfg.exports.email_events_path)
    history = [f for f in discover(spark, root) if "/history_" in f.path]
    loaded = table_ref(cfg, LOADED_FILES_TABLE, register=False)
    record_loaded(spark, loaded, [(f, 1) for f in history], run_id="history", loaded_at=now)


def bench_store(store: str, args: argparse.Namespace, tmp: Path, now: datetime) -> list[str]:
    """Fill both warehouses of one store, time alternating no-change runs, report."""
    env = {**os.environ, KEY_ENV: KEY}
    sizes = {"ten": (10, 10), "year": (args.pulls, args.files)}
    with (
        EmulatorServer(
            Dataset.generate(profiles=args.profiles, start=now - timedelta(hours=1)),
            requests_per_second=50,
            api_key=KEY,
        ) as server,
        CountingS3Server() as s3,
    ):
        warehouses = []
        for name, (pulls, files) in sizes.items():
            work = tmp / store / name
            work.mkdir(parents=True)
            if store == "s3":
                warehouse = s3_warehouse(work, name, server.url, args.full_listing_hours, s3)
            else:
                warehouse = local_warehouse(work, name, server.url, args.full_listing_hours)
            for path, data in export_files(server.dataset.email_events, files=1):
                warehouse.put("exports", path, data)
            run_job(warehouse, env, tmp)  # the real first sync
            add_history(warehouse, pulls, files, now)
            warehouses.append(warehouse)
        for _ in range(args.runs):
            for warehouse in warehouses:
                warehouse.runs.append(run_job(warehouse, env, tmp))
    return report(store, args, warehouses)


def report(store: str, args: argparse.Namespace, warehouses: list[Warehouse]) -> list[str]:
    what = "S3 requests (moto)" if store == "s3" else "Python file-system calls"
    seconds = {w.name: statistics.median(r.seconds for r in w.runs) for w in warehouses}
    requests = {
        w.name: statistics.median(sum(r.requests.values()) for r in w.runs) for w in warehouses
    }
    labels = {
        "ten": "after 10 runs (10 pulls/stream, 10 files)",
        "year": f"after a year ({args.pulls} pulls/stream, {args.files} files)",
    }
    lines = [
        f"{store}: no-change sync (four API streams, {args.profiles} profiles, and "
        f"email_events), whole process, exports.full_listing_hours {args.full_listing_hours:g}, "
        f"medians of {args.runs} alternating runs; requests: {what}",
        f"{'history':<44} {'seconds':>8} {'requests':>9}",
        *(f"{labels[n]:<44} {seconds[n]:>8.1f} {requests[n]:>9.0f}" for n in labels),
        f"ratio year / ten: {seconds['year'] / seconds['ten']:.2f} in time, "
        f"{requests['year'] / requests['ten']:.2f} in requests (target <= 1.15 each)",
    ]
    for w in warehouses:
        kinds = sum((r.requests for r in w.runs), Counter())
        lines.append(
            f"{w.name} runs: {', '.join(f'{r.seconds:.1f}' for r in w.runs)} s; requests "
            f"{', '.join(str(sum(r.requests.values())) for r in w.runs)}; by kind (all runs): "
            f"{', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}"
        )
        server: dict[str, float] = {}
        for run in w.runs:
            for key, value in run.server.items():
                server[key] = server.get(key, 0.0) + value
        if server:
            most = sorted(server.items(), key=lambda item: -item[1])[:6]
            top = ", ".join(f"{k} {v / len(w.runs):.2f}" for k, v in most)
            lines.append(
                f"{w.name} server seconds per run: {sum(server.values()) / len(w.runs):.2f} "
                f"(most: {top})"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed no-change runs of each")
    parser.add_argument("--stores", default="local,s3", help="local, s3 or both")
    parser.add_argument("--pulls", type=int, default=8760, help="pulls per stream of 'year'")
    parser.add_argument("--files", type=int, default=20000, help="export files of 'year'")
    parser.add_argument("--profiles", type=int, default=500)
    parser.add_argument(
        "--full-listing-hours", type=float, default=24.0,
        help="exports.full_listing_hours of both configs (0: list the export root whole)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.update(CREDENTIALS)  # before the benchmark's own Spark starts (S3A reads them)
    now = datetime.now(UTC)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ometria-history-") as tmp:
        for store in args.stores.split(","):
            lines += bench_store(store.strip(), args, Path(tmp), now)
    print("\n".join(lines))
    append("History: a no-change run after a year of hourly runs (bench/history.py)", lines)


if __name__ == "__main__":
    main()
