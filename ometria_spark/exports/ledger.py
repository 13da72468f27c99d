"""The ``_loaded_files`` table: which export files (path, size, modification time) were
loaded, so each file is read once. A file is recorded only after its rows were merged."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from ometria_spark.config import Config
from ometria_spark.delta_table import (
    TableRef,
    create_if_absent,
    open_table,
    retry_on_conflict,
    table_exists,
)
from ometria_spark.exports.files import ExportFile
from ometria_spark.landing import landing_for
from ometria_spark.spark import local_frame
from ometria_spark.storage import Storage

# One row per loaded file; ``rows`` counts every record read from it, quarantined included.
LOADED_FILES_SCHEMA = StructType(
    [
        StructField("path", StringType()),
        StructField("size", LongType()),
        StructField("modified_ms", LongType()),
        StructField("run_id", StringType()),
        StructField("rows", LongType()),
        StructField("loaded_at", TimestampType()),
    ]
)


# Up to this many files listed, only their rows of ``_loaded_files`` are read.
LOOKUP_LIMIT = 2000
LISTING_HINT = "_exports/listing.json"


@dataclass
class Listing:
    """Where the next listing of the export root starts (``{raw_path}/_exports/listing.json``,
    a hint: lost or for another root, the next run lists everything; files are loaded or
    not by ``_loaded_files`` alone). ``start`` is the folder of the newest file listed."""

    storage: Storage
    path: str
    root: str
    start: str | None = None
    full_at: str | None = None  # when the root was last listed whole (ISO, UTC)
    full: bool = True  # this run lists everything

    @staticmethod
    def read(config: Config, root: str, now: datetime, full_refresh: bool) -> Listing:
        landing = landing_for(config)
        listing = Listing(landing.storage, f"{landing.root}/{LISTING_HINT}", root)
        try:
            hint = json.loads(landing.storage.read_text(listing.path))
        except (FileNotFoundError, ValueError):
            return listing
        if not isinstance(hint, dict) or hint.get("root") != root or full_refresh:
            return listing
        listing.start, listing.full_at = hint.get("start"), hint.get("full_at")
        every = timedelta(hours=config.exports.full_listing_hours)
        due = (
            not every
            or listing.full_at is None
            or now - datetime.fromisoformat(listing.full_at) >= every
        )
        listing.full = due or listing.start is None
        return listing

    def save(
        self, files: Sequence[ExportFile], now: datetime, rejected: Sequence[str] = ()
    ) -> None:
        """After the files listed are loaded or rejected: start next time at the folder of
        the newest path listed, or of the earliest rejected file (retried every run)."""
        folders = [p.rsplit("/", 1)[0] for p in rejected]
        if files:
            folders.append(max(f.path for f in files).rsplit("/", 1)[0])
        start = min(folders) if folders else self.start
        full_at = now.isoformat() if self.full else self.full_at
        hint = {"root": self.root, "start": start, "full_at": full_at}
        self.storage.write_text(self.path, json.dumps(hint))


def new_files(
    spark: SparkSession,
    files: Sequence[ExportFile],
    loaded_files: TableRef,
    *,
    full_refresh: bool = False,
) -> list[ExportFile]:
    """The files whose (path, size, modified_ms) are not recorded as loaded.

    A full refresh ignores the record and returns every file. A file rewritten in place
    (new size or time) counts as new.
    """
    ordered = sorted(files, key=lambda f: (f.modified_ms, f.path))
    if full_refresh or not ordered:
        return ordered
    if not table_exists(spark, loaded_files):
        return ordered
    loaded_rows = open_table(spark, loaded_files).toDF().select("path", "size", "modified_ms")
    if len(ordered) <= LOOKUP_LIMIT:  # the usual, incremental case: only the rows of these
        loaded_rows = loaded_rows.where(F.col("path").isin([f.path for f in ordered]))
    rows = loaded_rows.collect()
    loaded = {(r["path"], r["size"], r["modified_ms"]) for r in rows}
    return [f for f in ordered if (f.path, f.size, f.modified_ms) not in loaded]


def record_loaded(
    spark: SparkSession,
    loaded_files: TableRef,
    files: Iterable[tuple[ExportFile, int]],
    *,
    run_id: str,
    loaded_at: datetime,
) -> None:
    """Record ``(file, rows)`` pairs as loaded (a re-load, by full refresh, updates them)."""
    rows = [(f.path, f.size, f.modified_ms, run_id, n, loaded_at) for f, n in files]
    if not rows:
        return
    table = create_if_absent(spark, loaded_files, LOADED_FILES_SCHEMA)
    updates = local_frame(spark, rows, LOADED_FILES_SCHEMA)
    merge = (
        table.alias("t")
        .merge(
            updates.alias("s"),
            "t.path = s.path AND t.size = s.size AND t.modified_ms = s.modified_ms",
        )
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
    )
    retry_on_conflict("_loaded_files", merge.execute)
