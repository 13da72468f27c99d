"""Reading export files: explicit all-string schemas, CSV files grouped by header,
JSON lines in one read, and where each record came from (see ``ometria_spark.exports``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from ometria_spark.errors import root_cause
from ometria_spark.exports.files import ExportFile, first_line_or_error, parse_header
from ometria_spark.spark import hadoop_path, literal_path, local_frame
from ometria_spark.tables import EMAIL_EVENTS
from ometria_spark.transforms import CORRUPT_COLUMN, ORDER_COLUMN, RAW_COLUMN, SOURCE_FILE

log = logging.getLogger(__name__)

FORMATS = ("csv", "json")

# The raw fields of an email event, all strings (the export's column names).
RAW_FIELDS: tuple[str, ...] = tuple(EMAIL_EVENTS.raw_schema.fieldNames())
# A file without one of these columns is not an export of email events: rejected whole.
# (A record is loadable with at least one of them: see ``TableSpec.key_fields``.)
REQUIRED_FIELDS: tuple[str, ...] = EMAIL_EVENTS.key_fields

# Helper columns that only live inside these reads.
_FILE_URI = "_file_uri"
_MODIFIED_MS = "_modified_ms"
_FILE_MS = "_file_ms"
_POSITION = "_position"
_MAX_REASON = 500
_HEADER_THREADS = 8


@dataclass
class ExportRead:
    """The lazily read records of some files, and the files rejected before reading."""

    records: DataFrame | None
    files: list[ExportFile]
    rejected: list[tuple[str, str]]


def _csv_reader(spark: SparkSession, width: int) -> Any:
    # Positional names: Spark maps CSV columns by position anyway, and this survives
    # odd header names (blank, duplicated, with dots).
    schema = StructType(
        [StructField(f"_c{i}", StringType()) for i in range(width)]
        + [StructField(CORRUPT_COLUMN, StringType())]
    )
    return (
        spark.read.format("csv")
        .schema(schema)
        .option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
        .option("multiLine", True)
        .option("escape", '"')
        .option("encoding", "UTF-8")
    )


def _json_reader(spark: SparkSession) -> Any:
    schema = StructType(
        [*EMAIL_EVENTS.raw_schema.fields, StructField(CORRUPT_COLUMN, StringType())]
    )
    return (
        spark.read.format("json")
        .schema(schema)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
        .option("encoding", "UTF-8")
    )


def _null() -> Column:
    return F.lit(None).cast(StringType())


def _read_csv_group(spark: SparkSession, paths: list[str], header: Sequence[str]) -> DataFrame:
    position: dict[str, int] = {}
    for i, name in enumerate(header):
        position.setdefault(name, i)
    columns = [
        (F.col(f"_c{position[name]}") if name in position else _null()).alias(name)
        for name in RAW_FIELDS
    ]
    return (
        _csv_reader(spark, len(header))
        .load([literal_path(p) for p in paths])
        .select(
            *columns,
            *_row_origin(),
        )
    )


def _row_origin() -> list[Column]:
    """The corrupt-record text and where each row came from: file, its time, position."""
    return [
        F.col(CORRUPT_COLUMN),
        F.col("_metadata.file_path").alias(_FILE_URI),
        F.unix_millis(F.col("_metadata.file_modification_time")).alias(_FILE_MS),
        F.monotonically_increasing_id().alias(_POSITION),
    ]


def _read_json(spark: SparkSession, paths: list[str]) -> DataFrame:
    return (
        _json_reader(spark)
        .load([literal_path(p) for p in paths])
        .select(
            *[F.col(name) for name in RAW_FIELDS],
            *_row_origin(),
        )
    )


def _file_uri(spark: SparkSession, path: str) -> str:
    # _metadata.file_path is the path as a URI (a space is %20), the listing is not.
    return str(hadoop_path(spark, path).toUri().toString())


def _with_file_columns(spark: SparkSession, df: DataFrame, files: list[ExportFile]) -> DataFrame:
    """Swap the scan's file URI for the listed path; add ``_fetch_order`` and ``_raw``."""
    lookup = local_frame(
        spark,
        [(_file_uri(spark, f.path), f.path, f.modified_ms) for f in files],
        StructType([StructField(_FILE_URI, StringType()), StructField(SOURCE_FILE, StringType()),
                    StructField(_MODIFIED_MS, LongType())]),
    )  # fmt: skip
    joined = df.join(F.broadcast(lookup), on=_FILE_URI, how="left")
    # Should a scheme ever render the URI differently, fall back to the scan's own values.
    source_file = F.coalesce(F.col(SOURCE_FILE), F.col(_FILE_URI))
    return joined.select(
        *[F.col(name) for name in RAW_FIELDS],
        F.col(CORRUPT_COLUMN),
        source_file.alias(SOURCE_FILE),
        F.col(CORRUPT_COLUMN).alias(RAW_COLUMN),
        F.struct(
            F.coalesce(F.col(_MODIFIED_MS), F.col(_FILE_MS)).alias("modified_ms"),
            source_file.alias("path"),
            F.col(_POSITION).alias("position"),
        ).alias(ORDER_COLUMN),
    )


def read_export_files(spark: SparkSession, files: Sequence[ExportFile], fmt: str) -> ExportRead:
    """Build the (lazy) read of export files: raw fields, ``_corrupt_record``,
    ``_source_file``, ``_raw`` and ``_fetch_order``.

    For CSV, reads each file's header line first; files whose header cannot be read or
    lacks a required column are returned as rejected and left out of the read.
    """
    if fmt not in FORMATS:
        raise ValueError(f"exports.format must be one of {FORMATS}, got {fmt!r}")
    files = list(files)
    if not files:
        return ExportRead(None, [], [])
    if fmt == "json":
        records = _read_json(spark, [f.path for f in files])
        return ExportRead(_with_file_columns(spark, records, files), files, [])

    rejected: list[tuple[str, str]] = []
    groups: dict[tuple[str, ...], list[ExportFile]] = {}
    empty: list[ExportFile] = []
    # One small read per file, dominated by latency on S3: done a few at a time (py4j
    # serves each Python thread on its own connection).
    with ThreadPoolExecutor(max_workers=_HEADER_THREADS) as pool:
        firsts = list(pool.map(lambda f: first_line_or_error(spark, f.path), files))
    for f, (line, error) in zip(files, firsts, strict=True):
        if error is not None:
            rejected.append((f.path, f"cannot read the header line: {error}"))
            continue
        if line is None:  # no header and no events: nothing to load, nothing to lose
            empty.append(f)
            continue
        header = parse_header(line)
        missing = [name for name in REQUIRED_FIELDS if name not in header]
        if missing:
            rejected.append(
                (
                    f.path,
                    f"CSV header lacks required column(s) {', '.join(missing)} "
                    f"(header: {', '.join(header)})"[:_MAX_REASON],
                )
            )
            continue
        groups.setdefault(tuple(header), []).append(f)
    if not groups:
        return ExportRead(None, empty, rejected)
    frames = [
        _read_csv_group(spark, [f.path for f in group], header) for header, group in groups.items()
    ]
    records = frames[0]
    for frame in frames[1:]:
        records = records.unionByName(frame)
    readable = [f for group in groups.values() for f in group]
    return ExportRead(_with_file_columns(spark, records, readable), readable + empty, rejected)


def count_alone(spark: SparkSession, f: ExportFile, fmt: str) -> str | None:
    """Read one file on its own; the error text if that fails, else None."""
    try:
        if fmt == "json":
            _json_reader(spark).load(literal_path(f.path)).count()
        else:
            # Width 1 is enough: counting parses every record of the file all the same.
            _csv_reader(spark, 1).load(literal_path(f.path)).count()
    except Exception as exc:  # Spark wraps I/O errors in several exception types
        return root_cause(exc)
    return None
