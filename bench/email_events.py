"""Benchmark: loading email-event export files, and whether an increment's MERGE cost
follows the increment's size rather than the table's.

Generates N events over ~60 days as gzip CSV export files in nested date folders, loads them
all into a fresh table (rows/s), builds a second table 10x smaller from 10% of the files,
clusters both with OPTIMIZE (where Delta applies the liquid clustering by ``event_at``),
then loads the same 1% increment of recent events into each and compares the times.
Not a test: ``.venv/bin/python bench/email_events.py [--events 2000000]``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ometria_spark.config import Config, StorageConfig
from ometria_spark.delta_table import TableRef
from ometria_spark.exports import EmailEventsResult, load_email_events
from ometria_spark.spark import get_spark
from ometria_spark.state import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append

COLUMNS = [
    "event_id", "uuid", "to_address", "event_type", "dt_occurred", "bounce_class", "reason",
    "device_type", "geo_country", "geo_region", "geo_timezone", "target_url",
    "campaign_title", "campaign_type",
]  # fmt: skip
EVENT_TYPES = ["send", "send", "send", "open", "open", "click", "bounce", "unsubscribe"]
DEVICES = ["desktop", "mobile", "tablet", ""]
COUNTRIES = [("GB", "England", "Europe/London"), ("FR", "Île-de-France", "Europe/Paris"),
             ("US", "California", "America/Los_Angeles"), ("", "", "")]  # fmt: skip
FIRST_DAY = datetime(2026, 9, 1, tzinfo=UTC)
SOURCE = "bench-source"
ACCOUNT = "bench-account"


def write_day(
    root: Path, day: int, events: int, files: int, first_id: int, rng: random.Random
) -> int:
    """Write ``events`` events of day ``day`` into ``files`` gzip CSV files; return the next id."""
    date = FIRST_DAY + timedelta(days=day)
    folder = root / f"{date:%Y/%m/%d}"
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-events // files)
    next_id = first_id
    for n in range(files):
        count = min(per_file, first_id + events - next_id)
        if count <= 0:
            break
        with gzip.open(folder / f"email_events_{n}.csv.gz", "wt", newline="", encoding="utf-8",
                       compresslevel=6) as handle:  # fmt: skip
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for i in range(next_id, next_id + count):
                kind = rng.choice(EVENT_TYPES)
                at = date + timedelta(seconds=rng.randrange(86_400))
                country, region, zone = rng.choice(COUNTRIES)
                writer.writerow([
                    f"ev-{i}", f"send-{i // 25}", f"user{rng.randrange(500_000)}@example.com",
                    kind, f"{at:%Y-%m-%d %H:%M:%S}", "hard" if kind == "bounce" else "",
                    "mailbox full" if kind == "bounce" else "", rng.choice(DEVICES), country,
                    region, zone,
                    f"https://shop.example/p/{i % 977}?utm=a,b" if kind == "click" else "",
                    f'Campaign {i % 40}, "week {day // 7}"', rng.choice(["mass", "trigger"]),
                ])  # fmt: skip
        next_id += count
    return next_id


def link_files(source: Path, target: Path, keep: int) -> None:
    """Hard-link every ``keep``-th file of ``source`` into ``target`` (same folders)."""
    for n, path in enumerate(sorted(source.rglob("*.csv.gz"))):
        if n % keep == 0:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)


@dataclass
class Tables:
    """One benchmark table with its state tables."""

    base: Path

    def load(self, spark: SparkSession, root: Path, run_id: str) -> tuple[EmailEventsResult, float]:
        config = Config(
            account_id=ACCOUNT,
            source_id=SOURCE,
            storage=StorageConfig(raw_path=str(self.base / "raw"), tables_path=str(self.base)),
        )
        started = time.monotonic()
        result = load_email_events(
            spark,
            root=str(root),
            fmt="csv",
            full_refresh=False,
            table=TableRef(str(self.base / "email_events"), is_path=True),
            loaded_files=TableRef(str(self.base / "_loaded_files"), is_path=True),
            state=StateStore(spark, config),
            source_id=SOURCE,
            account_id=ACCOUNT,
            run_id=run_id,
            synced_at=datetime.now(UTC),
        )
        return result, time.monotonic() - started

    def optimize(self, spark: SparkSession) -> float:
        started = time.monotonic()
        spark.sql(f"OPTIMIZE delta.`{self.base / 'email_events'}`")
        return time.monotonic() - started

    def files_and_rows(self, spark: SparkSession) -> tuple[int, int]:
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{self.base / 'email_events'}`").first()
        rows = spark.read.format("delta").load(str(self.base / "email_events")).count()
        return (int(detail["numFiles"]) if detail else 0), rows

    def files_in_range(self, spark: SparkSession, low: datetime, high: datetime) -> str:
        """``overlapping/all``: the table's files whose event_at statistics overlap
        [low, high] (or hold NULLs), i.e. what the MERGE's prune lets it read.

        Read from the JSON commits of the Delta log (no checkpoint exists at this point).
        """
        log = spark.read.json(str(self.base / "email_events" / "_delta_log" / "*.json"))
        stats = "minValues struct<event_at: timestamp>, maxValues struct<event_at: timestamp>, "
        stats += "nullCount struct<event_at: long>"
        active = log.where(F.col("add").isNotNull()).select(
            F.col("add.path").alias("path"), F.from_json("add.stats", stats).alias("s")
        )
        if "remove" in log.columns:
            removed = log.where(F.col("remove").isNotNull()).select(F.col("remove.path"))
            active = active.join(removed, "path", "left_anti")
        overlapping = active.where(
            (
                (F.col("s.minValues.event_at") <= F.lit(high))
                & (F.col("s.maxValues.event_at") >= F.lit(low))
            )
            | (F.col("s.nullCount.event_at") > 0)
        )
        return f"{overlapping.count()}/{active.count()}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the full load")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--files-per-day", type=int, default=4)
    parser.add_argument(
        "--max-file-mb", type=int, default=0,
        help="OPTIMIZE's target file size in MB (default: ~1/40 of the data, so that the "
        "clustered table has enough files for skipping to show at this scale)",
    )  # fmt: skip
    parser.add_argument("--workdir", help="where to write files and tables (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text)
        lines.append(text)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="email-events-bench-"))
    rng = random.Random(42)
    full_root, small_root = work / "exports_full", work / "exports_small"
    started = time.monotonic()
    next_id = 0
    per_day = -(-args.events // args.days)
    for day in range(args.days):
        count = min(per_day, args.events - next_id)
        next_id = write_day(full_root, day, count, args.files_per_day, next_id, rng)
    link_files(full_root, small_root, keep=10)
    say(f"wrote {next_id:,} events in {time.monotonic() - started:.1f}s under {work}")

    # At ~40 bytes per event in Parquet, 1 MB per million events gives ~40 files.
    max_mb = args.max_file_mb or max(1, args.events // 1_000_000)
    spark = get_spark("email-events-bench")
    spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(max_mb * 1024 * 1024))
    full, small = Tables(work / "tables_full"), Tables(work / "tables_small")
    loaded, seconds = full.load(spark, full_root, "full")
    say(
        f"full load: {loaded.rows_read:,} rows from {loaded.files_loaded} files in {seconds:.1f}s "
        f"= {loaded.rows_read / seconds:,.0f} rows/s"
    )
    small_loaded, small_seconds = small.load(spark, small_root, "small")
    say(f"small load: {small_loaded.rows_read:,} rows in {small_seconds:.1f}s")
    say(
        f"OPTIMIZE (clustering by event_at, max file {max_mb} MB): "
        f"full {full.optimize(spark):.1f}s, small {small.optimize(spark):.1f}s"
    )

    # The increment: 1% new events, mostly on a new day, some late ones for the last day.
    increment = max(1, args.events // 100)
    late = increment // 5
    inc_root = work / "increment"
    end = write_day(inc_root, args.days - 1, late, 1, next_id, rng)
    end = write_day(inc_root, args.days, increment - late, 2, end, rng)
    for path in sorted(inc_root.rglob("*.csv.gz")):
        path.rename(path.with_name("inc_" + path.name))
    inc_low = FIRST_DAY + timedelta(days=args.days - 1)
    inc_high = FIRST_DAY + timedelta(days=args.days + 1)
    for target_root in (full_root, small_root):
        link_files(inc_root, target_root, keep=1)

    rows = []
    for name, tables, root in (("full", full, full_root), ("small (10%)", small, small_root)):
        files_before, table_rows = tables.files_and_rows(spark)
        touched = tables.files_in_range(spark, inc_low, inc_high)
        result, inc_seconds = tables.load(spark, root, f"increment-{name}")
        rows.append((name, table_rows, files_before, result, inc_seconds, touched))

    say()
    say(
        f"{'table':<12} {'rows':>10} {'files':>6} {'inc rows':>9} {'inserted':>9} "
        f"{'seconds':>8} {'files to scan':>14}"
    )
    for name, table_rows, files, result, inc_seconds, touched in rows:
        say(
            f"{name:<12} {table_rows:>10,} {files:>6} {result.rows_read:>9,} "
            f"{result.inserted:>9,} {inc_seconds:>8.2f} {touched:>14}"
        )
    say(f"increment time ratio large/small: {rows[0][4] / rows[1][4]:.2f} (table size ratio 10)")
    spark.stop()
    append(
        f"Email events: export files into email_events ({args.events:,} events)",
        lines,
    )
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
