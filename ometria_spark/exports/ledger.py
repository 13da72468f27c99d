"""The ``_loaded_files`` table: which export files (path, size, modification time) were
loaded, so each file is read once. A file is recorded only after its rows were merged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pyspark.sql import SparkSession
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from ometria_spark.delta_table import (
    TableRef,
    create_if_absent,
    open_table,
    retry_on_conflict,
    table_exists,
)
from ometria_spark.exports.files import ExportFile

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
    # One small row per file ever loaded: collecting them stays cheap for years of files.
    rows = open_table(spark, loaded_files).toDF().select("path", "size", "modified_ms").collect()
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
    updates = spark.createDataFrame(rows, LOADED_FILES_SCHEMA)
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
