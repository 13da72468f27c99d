"""Benchmark: load throughput of the profiles stream, from landed pages to the Delta table.

Lands a full pull of N profiles from the emulator (no rate limit) the way the job does
(``extract.make_plan`` + ``extract.land``), then times, in one Spark session:

- the read floor: Spark reading the same page files with the same schema (the records as
  structs, as the reader parses them) and writing them to the ``noop`` format;
- the load: ``load.merge_pull`` of that pull into an empty table (read, transform, MERGE,
  cursor), the product's own code path;
- a 1% increment: 1% of the profiles change in the emulator (new ``update_since``, changed
  fields), the incremental pull is planned from the table's cursor and landed, and merged
  into the full table and into a table 10x smaller that holds the same changed profiles.

Prints phase, rows, seconds, rows/s and the ratio to the read floor of the same files, and
appends the table to ``bench/results.md``.
Not a test: ``.venv/bin/python bench/load_profiles.py [--profiles 1000000]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, StructField, StructType

from ometria_spark.client import OmetriaClient, Page, Throttle
from ometria_spark.config import Config, config_from_dict
from ometria_spark.emulator.dataset import DAY, Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.extract import envelope, land, make_plan
from ometria_spark.landing import Landing, Plan, Request
from ometria_spark.load import merge_pull
from ometria_spark.readers import PAGE_SCHEMA
from ometria_spark.spark import get_spark
from ometria_spark.state import MergeCounts, StateStore
from ometria_spark.storage import LocalStorage
from ometria_spark.tables import PROFILES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append

KEY = "bench-key-load-profiles"
PAGE_SIZE = 250


@dataclass
class Target:
    """One profiles table with its state tables (cursors, runs, quarantine)."""

    config: Config
    state: StateStore

    @property
    def location(self) -> str:
        return self.config.table_location("profiles")


def make_target(spark: SparkSession, work: Path, name: str, url: str) -> Target:
    config = config_from_dict(
        {
            "account_id": "bench",
            "source_id": "bench",
            "api": {"base_url": url, "key_env": "OMETRIA_BENCH_KEY", "page_size": PAGE_SIZE},
            "storage": {
                "raw_path": str(work / f"raw_{name}"),
                "tables_path": str(work / f"tables_{name}"),
                "schema": f"bench_{name}",
            },
            "sync": {"streams": ["profiles"]},
        }
    )
    return Target(config, StateStore(spark, config))


def page_files(landing: Landing, plan: Plan) -> list[str]:
    return landing.page_paths(plan)


def read_floor(spark: SparkSession, paths: list[str]) -> None:
    """Spark reads the page files with the records' full schema, into the noop sink."""
    records = StructType(PROFILES.raw_schema.fields)
    schema = StructType(
        [
            StructField(f.name, ArrayType(records)) if f.name == "records" else f
            for f in PAGE_SCHEMA.fields
        ]
    )
    spark.read.schema(schema).json(paths).write.format("noop").mode("overwrite").save()


def land_subset(landing: Landing, run_id: str, profiles: list[dict[str, Any]]) -> Plan:
    """Land ``profiles`` as a full pull would have (pages of 250), without HTTP."""
    request = Request("profiles", {})
    plan = Plan("profiles", run_id, PAGE_SIZE, (request,))
    landing.save_plan(plan)
    fetched_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for number, offset in enumerate(range(0, len(profiles), PAGE_SIZE)):
        params = {"limit": str(PAGE_SIZE), "offset": str(offset)}
        page = Page("/profiles", params, profiles[offset : offset + PAGE_SIZE], fetched_at,
                    number, offset)  # fmt: skip
        landing.write_page(plan, 0, envelope(plan, request, page, number))
    landing.mark_request_done(plan, 0)
    return plan


def change_profiles(ds: Dataset, indexes: list[int], rng: random.Random) -> None:
    """Update these profiles in the emulator the way a day of activity does."""
    day_start = ds.now.timestamp()
    with ds.lock:
        for i in indexes:
            ds.profiles[i] = ds._updated_profile(ds.profiles[i], day_start + rng.random() * DAY)
            # Also a field that the emulator's own updates leave alone.
            ds.profiles[i]["phone_number"] = f"+4477001{i % 100000:05d}"
        ds.now += timedelta(days=1)
        ds.version += 1  # invalidates the emulator's updateSince cache


def table_files(spark: SparkSession, location: str) -> int:
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{location}`").first()
    return int(detail["numFiles"]) if detail is not None else 0


def last_operation(spark: SparkSession, location: str) -> str:
    row = spark.sql(f"DESCRIBE HISTORY delta.`{location}` LIMIT 1").first()
    if row is None:
        return ""
    metrics = row["operationMetrics"] or {}
    keep = ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetFilesAdded",
            "numTargetFilesRemoved", "numTargetDeletionVectorsAdded", "executionTimeMs",
            "scanTimeMs", "rewriteTimeMs", "numOutputRows", "numFiles")  # fmt: skip
    shown = ", ".join(f"{k}={metrics[k]}" for k in keep if k in metrics)
    return f"{row['operation']} v{row['version']}: {shown}"


@dataclass(frozen=True)
class Spent:
    """A phase's wall seconds, and the CPU seconds the JVM used meanwhile (on Linux; less
    disturbed than wall time by other processes on a shared machine; 0 if unknown)."""

    wall: float
    cpu: float


class Clock:
    """Measures phases: wall time and the Spark JVM's CPU time."""

    def __init__(self, spark: SparkSession) -> None:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        self._stat = Path(f"/proc/{jvm.java.lang.ProcessHandle.current().pid()}/stat")

    def _cpu(self) -> float:
        try:
            fields = self._stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> tuple[float, float]:
        return time.monotonic(), self._cpu()

    def since(self, mark: tuple[float, float]) -> Spent:
        return Spent(time.monotonic() - mark[0], self._cpu() - mark[1])


class Timer:
    """Times ``merge_pull`` runs; optionally profiles the driver with pyinstrument."""

    def __init__(self, clock: Clock, profile_dir: Path | None) -> None:
        self.clock = clock
        self.profile_dir = profile_dir

    def merge(
        self, spark: SparkSession, name: str, target: Target, landing: Landing, plan: Plan
    ) -> tuple[MergeCounts, Spent]:
        profiler = None
        if self.profile_dir is not None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.005)
            profiler.start()
        mark = self.clock.start()
        counts = merge_pull(spark, target.config, target.state, landing, plan)
        spent = self.clock.since(mark)
        if profiler is not None and self.profile_dir is not None:
            profiler.stop()
            out = self.profile_dir / f"{name}.txt"
            out.write_text(profiler.output_text(unicode=False, color=False), encoding="utf-8")
            print(f"  driver profile: {out}")
        print(f"  {name} ({spent.wall:.1f}s): {last_operation(spark, target.location)}")
        return counts, spent

    def floor(self, spark: SparkSession, paths: list[str]) -> Spent:
        """The better of two reads (the second finds the files in the OS cache)."""
        runs = []
        for _ in range(2):
            mark = self.clock.start()
            read_floor(spark, paths)
            runs.append(self.clock.since(mark))
        return min(runs, key=lambda spent: spent.wall)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--workdir", help="where to land pages and write tables (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile", action="store_true", help="pyinstrument the driver during each MERGE"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to results.md")
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting for the session (repeatable), to compare session options",
    )
    args = parser.parse_args(argv)
    n = args.profiles
    work = Path(args.workdir or tempfile.mkdtemp(prefix="load-profiles-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    os.environ["OMETRIA_BENCH_KEY"] = KEY

    started = time.monotonic()
    ds = Dataset.generate(seed=5, profiles=n, lists=1)
    print(f"generated {n:,} profiles in {time.monotonic() - started:.1f}s under {work}")
    server = EmulatorServer(ds, api_key=KEY).start()
    extra = dict(item.split("=", 1) for item in args.conf)
    spark = get_spark(
        "load-profiles-bench",
        extra_conf={"spark.sql.warehouse.dir": str(work / "warehouse"), **extra},
    )
    timer = Timer(Clock(spark), work if args.profile else None)
    client = OmetriaClient(server.url, KEY, page_size=PAGE_SIZE, throttle=Throttle(1e9))
    full = make_target(spark, work, "full", server.url)
    small = make_target(spark, work, "small", server.url)
    # Each table has its own landing zone, as two deployments would.
    landing = Landing(full.config.storage.raw_path, LocalStorage())
    small_landing = Landing(small.config.storage.raw_path, LocalStorage())

    # The full pull, landed over HTTP exactly as a first sync does.
    plan = make_plan("profiles", run_id="full", client=client, page_size=PAGE_SIZE, cursors={},
                     lookback_minutes=60, start_date="2015-01-01", window_days=30,
                     now=ds.now)  # fmt: skip
    landing.save_plan(plan)
    started = time.monotonic()
    land(plan, client, landing)
    fetch_full = time.monotonic() - started
    paths = page_files(landing, plan)
    print(f"landed {len(paths):,} pages in {fetch_full:.1f}s")

    floor_full = timer.floor(spark, paths)
    print(f"read floor: {floor_full.wall:.1f}s")
    loaded, load_full = timer.merge(spark, "load_full", full, landing, plan)

    # The changed 1%, and a 10x smaller table holding them (as they were) and others.
    changed = sorted(rng.sample(range(n), max(1, n // 100)))
    changed_set = set(changed)
    others = [i for i in range(n) if i not in changed_set]
    subset = sorted([*changed, *rng.sample(others, max(0, n // 10 - len(changed)))])
    # A throwaway table that takes the same increment first, so that neither measured
    # increment pays for the JVM compiling the MERGE-with-updates code paths.
    warm = make_target(spark, work, "warmup", server.url)
    warm_landing = Landing(warm.config.storage.raw_path, LocalStorage())
    warm_plan = land_subset(warm_landing, "warm", [ds.profiles[i] for i in changed[:1000]])
    merge_pull(spark, warm.config, warm.state, warm_landing, warm_plan)
    small_plan = land_subset(small_landing, "small", [ds.profiles[i] for i in subset])
    timer.merge(spark, "load_small", small, small_landing, small_plan)

    change_profiles(ds, changed, rng)
    cursors = full.state.cursors("profiles")
    inc_plan = make_plan("profiles", run_id="increment", client=client, page_size=PAGE_SIZE,
                         cursors=cursors, lookback_minutes=60, start_date="2015-01-01",
                         window_days=30, now=ds.now)  # fmt: skip
    landing.save_plan(inc_plan)
    started = time.monotonic()
    land(inc_plan, client, landing)
    fetch_inc = time.monotonic() - started
    inc_paths = page_files(landing, inc_plan)
    floor_inc = timer.floor(spark, inc_paths)
    # The same landed increment for the small table.
    shutil.copytree(
        landing.folder("profiles", inc_plan.run_id),
        small_landing.folder("profiles", inc_plan.run_id),
    )
    shutil.copytree(
        landing.folder("profiles", inc_plan.run_id),
        warm_landing.folder("profiles", inc_plan.run_id),
    )
    merge_pull(spark, warm.config, warm.state, warm_landing, inc_plan)
    inc_full_counts, inc_full = timer.merge(spark, "increment_full", full, landing, inc_plan)
    inc_small_counts, inc_small = timer.merge(
        spark, "increment_small", small, small_landing, inc_plan
    )
    server.stop()
    client.close()

    def line(phase: str, rows: int, spent: Spent | float, floor: Spent | None = None) -> str:
        """A table row; a float is wall time only (phases outside Spark)."""
        if not isinstance(spent, Spent):
            return f"{phase:<32} {rows:>10,} {spent:>8.2f} {rows / spent:>9,.0f}"
        text = f"{phase:<32} {rows:>10,} {spent.wall:>8.2f} {rows / spent.wall:>9,.0f}"
        text += f" {spent.cpu:>7.1f}"
        if floor is not None:
            cpu_ratio = spent.cpu / floor.cpu if floor.cpu else 0.0
            text += f" {spent.wall / floor.wall:>6.2f} {cpu_ratio:>6.2f}"
        return text

    inc_rows = inc_full_counts.records_read
    lines = [
        f"{'phase':<32} {'rows':>10} {'wall s':>8} {'rows/s':>9} {'cpu s':>7} "
        f"{'/floor':>6} {'(cpu)':>6}",
        line("fetch + land full pull (HTTP)", n, fetch_full),
        line("read floor (noop)", n, floor_full, floor_full),
        line("load into empty table", loaded.records_read, load_full, floor_full),
        line("fetch + load (no JVM start)", loaded.records_read, fetch_full + load_full.wall),
        line("fetch + land 1% increment", inc_rows, fetch_inc),
        line("increment read floor (noop)", inc_rows, floor_inc, floor_inc),
        line(f"increment into {n:,}", inc_rows, inc_full, floor_inc),
        line(
            f"increment into {len(subset):,}", inc_small_counts.records_read, inc_small, floor_inc
        ),
        f"increment large/small: wall {inc_full.wall / inc_small.wall:.2f}, cpu "
        f"{inc_full.cpu / inc_small.cpu if inc_small.cpu else 0:.2f} (table size ratio "
        f"{n / len(subset):.0f}); updated {inc_full_counts.updated:,} / "
        f"{inc_small_counts.updated:,}, inserted {inc_full_counts.inserted:,} / "
        f"{inc_small_counts.inserted:,}",
        f"files: full table {table_files(spark, full.location)}, small table "
        f"{table_files(spark, small.location)}; pages: full {len(paths):,}, increment "
        f"{len(inc_paths):,}; cpu s: the Spark JVM's",
    ]
    print()
    print("\n".join(lines))
    if not args.no_record:
        append(f"bench/load_profiles.py --profiles {n}", lines)
    spark.stop()
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
