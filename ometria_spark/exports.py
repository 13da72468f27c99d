"""Ometria's self-serve email-event export files -> the ``email_events`` Delta table.

Each export file is loaded exactly once: files are discovered under one root (any depth),
compared with the ``_loaded_files`` Delta table, and only new ones are read. A file is
recorded as loaded only after its rows were merged, so a crash in between makes the next
run read it again, which the idempotent MERGE absorbs.

Reading uses explicit all-string schemas (never inference):

- CSV: Spark maps columns by position when given a schema and ignores the header, while
  export files may order or omit columns differently. So the header line of every new
  file is read on the driver, files are grouped by identical header, and each group is
  read once with a positional schema in that header's order. A file without
  ``to_address``, ``event_type`` or ``dt_occurred`` is rejected (reported, quarantined,
  not recorded, so it is retried after it is fixed); the others still load.
- JSON lines: one read with the raw schema; a file where a required column is absent
  from every row is rejected whole in the same way.

Every record gets ``_source_file`` (the file's path as discovered), ``_fetch_order``
(file modification time, path, position in the file: a later file's copy of an event
wins) and ``_raw``: the text of a record that did not parse (``_corrupt_record``), else
NULL; records quarantined for another reason get their raw fields as JSON instead.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from ometria_spark.crash import crash_later, crash_point
from ometria_spark.spark import hadoop_conf, hadoop_path, jvm, literal_path, release
from ometria_spark.state import LOADED_FILES_TABLE, StateStore
from ometria_spark.tables import EMAIL_EVENTS
from ometria_spark.transforms import (
    BAD_VALUES_COLUMN,
    CORRUPT_COLUMN,
    ORDER_COLUMN,
    PROBLEM_COLUMN,
    RAW_COLUMN,
    SOURCE_FILE,
    blank_to_null,
    split_loadable,
    to_target,
    with_problems,
)
from ometria_spark.writer import (
    TableRef,
    create_if_absent,
    ensure_table,
    merge_into,
    open_table,
    table_exists,
)

log = logging.getLogger(__name__)

STREAM = "email_events"
FORMATS = ("csv", "json")

# The raw fields of an email event, all strings (the export's column names).
RAW_FIELDS: tuple[str, ...] = tuple(EMAIL_EVENTS.raw_schema.fieldNames())
# A file without one of these columns is not an export of email events: rejected whole.
# (A record is loadable with at least one of them: see ``TableSpec.key_fields``.)
REQUIRED_FIELDS: tuple[str, ...] = EMAIL_EVENTS.key_fields

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

# Helper columns that only live inside this module's reads.
_FILE_URI = "_file_uri"
_MODIFIED_MS = "_modified_ms"
_FILE_MS = "_file_ms"
_POSITION = "_position"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_REASON = 500
_HEADER_THREADS = 8


@dataclass(frozen=True, order=True)
class ExportFile:
    """One export file as listed: its path, size in bytes and modification time (ms)."""

    path: str
    size: int
    modified_ms: int


@dataclass
class EmailEventsResult:
    """What one load of the export files did.

    ``quarantined`` counts records (lines); rejected files are listed in
    ``files_rejected`` (and also written to the quarantine table, one row per file).
    """

    files_seen: int
    files_loaded: int
    files_rejected: list[tuple[str, str]] = field(default_factory=list)
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    bad_values: int = 0
    files_new: int = 0
    collapsed: int = 0


@dataclass
class ExportRead:
    """The lazily read records of some files, and the files rejected before reading."""

    records: DataFrame | None
    files: list[ExportFile]
    rejected: list[tuple[str, str]]


# --- Hadoop FileSystem access (file:, s3a:, dbfs: alike) ------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def discover(spark: SparkSession, root: str) -> list[ExportFile]:
    """Every data file under ``root`` (recursively), ordered by modification time and path.

    Names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``, ``_temporary/``) are
    skipped, in the file name or in any folder below ``root``. A missing root raises
    ``FileNotFoundError``.
    """
    conf = hadoop_conf(spark)
    root_path = hadoop_path(spark, root)
    fs = root_path.getFileSystem(conf)
    if not fs.exists(root_path):
        raise FileNotFoundError(f"email-event export root does not exist: {root}")
    root_text = fs.makeQualified(root_path).toString().rstrip("/")
    found: list[ExportFile] = []
    listing = fs.listFiles(root_path, True)
    while listing.hasNext():
        status = listing.next()
        path = status.getPath().toString()
        relative = path[len(root_text) + 1 :] if path.startswith(root_text + "/") else ""
        parts = relative.split("/") if relative else [path.rsplit("/", 1)[-1]]
        if any(_is_hidden(part) for part in parts):
            continue
        found.append(ExportFile(path, int(status.getLen()), int(status.getModificationTime())))
    return sorted(found, key=lambda f: (f.modified_ms, f.path))


def read_first_line(spark: SparkSession, path: str) -> str | None:
    """The first line of a file (gunzipped when its name says so); None if it is empty.

    Only the first line is read, so this costs one small read per file even for big files.
    """
    gateway = jvm(spark)
    conf = hadoop_conf(spark)
    hpath = hadoop_path(spark, path)
    stream = hpath.getFileSystem(conf).open(hpath)
    try:
        codec = gateway.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
        if codec is not None:
            stream = codec.createInputStream(stream)
        reader = gateway.java.io.BufferedReader(gateway.java.io.InputStreamReader(stream, "UTF-8"))
        line = reader.readLine()
    finally:
        stream.close()
    return None if line is None else str(line)


def _first_line_or_error(spark: SparkSession, path: str) -> tuple[str | None, str | None]:
    try:
        return read_first_line(spark, path), None
    except Exception as exc:  # any I/O or codec error concerns this file only
        return None, _short_reason(exc)


def parse_header(line: str) -> list[str]:
    """A CSV header line -> column names (RFC 4180 quoting; a UTF-8 BOM is dropped)."""
    row = next(csv.reader([line.removeprefix("\ufeff")]), [])
    return [name.strip() for name in row]


# --- the loaded-files record ------------------------------------------------------------


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
    (
        table.alias("t")
        .merge(
            updates.alias("s"),
            "t.path = s.path AND t.size = s.size AND t.modified_ms = s.modified_ms",
        )
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )


# --- reading ----------------------------------------------------------------------------


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
    lookup = spark.createDataFrame(
        [(_file_uri(spark, f.path), f.path, f.modified_ms) for f in files],
        f"{_FILE_URI} string, {SOURCE_FILE} string, {_MODIFIED_MS} long",
    )
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


def _short_reason(exc: BaseException) -> str:
    """The telling line of a Spark/Java error (the root cause), not the whole stack."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if "Exception:" in line or "Error:" in line]
    text = causes[-1] if causes else (lines[0] if lines else type(exc).__name__)
    return text[:_MAX_REASON]


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
        firsts = list(pool.map(lambda f: _first_line_or_error(spark, f.path), files))
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


def _count_alone(spark: SparkSession, f: ExportFile, fmt: str) -> str | None:
    """Read one file on its own; the error text if that fails, else None."""
    try:
        if fmt == "json":
            _json_reader(spark).load(literal_path(f.path)).count()
        else:
            # Width 1 is enough: counting parses every record of the file all the same.
            _csv_reader(spark, 1).load(literal_path(f.path)).count()
    except Exception as exc:  # Spark wraps I/O errors in several exception types
        return _short_reason(exc)
    return None


# --- the MERGE's pruning ------------------------------------------------------------


def _micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def event_time_prune(
    low: datetime | None, high: datetime | None, *, has_null: bool
) -> Column | None:
    """A predicate on the target's ``t.event_at`` covering a batch's events.

    The key hashes the raw ``dt_occurred`` text and ``event_at`` is parsed from that same
    text, so a target row with the same key as a batch row has the same ``event_at``:
    matching only target rows inside the batch's [low, high] loses no match, and lets
    Delta skip every file whose event_at range lies outside it (the table is clustered by
    event_at). Rows whose dt_occurred did not parse have a NULL event_at, which no range
    matches: without ``OR t.event_at IS NULL`` they would be inserted again on every
    load. None: nothing to match (the batch is empty).
    """
    target = F.col("t.event_at")
    parts: list[Column] = []
    if low is not None and high is not None:
        parts.append(target.between(F.lit(low), F.lit(high)))
    if has_null:
        parts.append(target.isNull())
    if not parts:
        return None
    predicate = parts[0]
    for part in parts[1:]:
        predicate = predicate | part
    return predicate


# --- the load -------------------------------------------------------------------------


def _file_stats(batch: DataFrame) -> dict[str, dict[str, Any]]:
    """Per file: rows read, problem rows, and whether each required field occurs at all."""
    present = [
        F.max(blank_to_null(F.col(name)).isNotNull().cast("int")).alias(name)
        for name in REQUIRED_FIELDS
    ]
    rows = (
        batch.groupBy(SOURCE_FILE)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.col(PROBLEM_COLUMN)).alias("problems"),
            *present,
        )
        .collect()
    )
    return {r[SOURCE_FILE]: r.asDict() for r in rows}


def _quarantine_files(
    spark: SparkSession, state: StateStore, rejected: list[tuple[str, str]], run_id: str
) -> None:
    if not rejected:
        return
    rows = spark.createDataFrame(
        [(path, reason, path) for path, reason in rejected],
        f"{SOURCE_FILE} string, {PROBLEM_COLUMN} string, {RAW_COLUMN} string",
    )
    state.quarantine(rows, stream=STREAM, run_id=run_id)


def load_email_events(
    spark: SparkSession,
    *,
    root: str,
    fmt: str,
    full_refresh: bool,
    table: TableRef,
    loaded_files: TableRef,
    state: StateStore,
    source_id: str,
    account_id: str,
    run_id: str,
    synced_at: datetime,
) -> EmailEventsResult:
    """Load the export files under ``root`` not loaded before (all of them on a full
    refresh) into the ``email_events`` table, and record them in ``loaded_files``.

    Bad records are quarantined; files that cannot be read (no header, a required column
    missing, a truncated gzip) are rejected: reported, quarantined as one row each, not
    recorded, while every other file loads. With no new file, nothing is read or merged.
    """
    files = discover(spark, root)
    if not full_refresh and not table_exists(spark, table) and table_exists(spark, loaded_files):
        # The table is gone (dropped by hand, or a new storage.tables_path) while the files
        # are recorded as loaded: load them all again, or the table would stay empty.
        log.warning("email_events: its table is missing while _loaded_files records loaded "
                    "files; loading every file again")  # fmt: skip
        full_refresh = True
    todo = new_files(spark, files, loaded_files, full_refresh=full_refresh)
    result = EmailEventsResult(files_seen=len(files), files_loaded=0, files_new=len(todo))
    if not todo:
        return result

    read = read_export_files(spark, todo, fmt)
    rejected = list(read.rejected)
    readable = read.files
    cached: DataFrame | None = None
    stats: dict[str, dict[str, Any]] = {}
    while read.records is not None:
        # The files are read once and kept (memory, spilling to disk) for the passes
        # below. A local checkpoint, not .cache(): Delta fails a MERGE whose source plan
        # holds a cached relation unless it copies that source yet again
        # (merge.materializeSource), while a checkpoint is a plain, stable RDD to it.
        cached = read.records.transform(with_problems(EMAIL_EVENTS)).localCheckpoint(eager=False)
        try:
            # The one pass over the files in the normal case: it fills the checkpoint and
            # is where a broken file (a truncated gzip) makes Spark's read fail.
            stats = _file_stats(cached)
            break
        except Exception as exc:  # Spark wraps I/O errors in several exception types
            release(cached)
            cached = None
            # Only now is each file read alone, to find the broken one(s).
            broken = [(f, _count_alone(spark, f, fmt)) for f in readable]
            bad = [(f.path, reason) for f, reason in broken if reason is not None]
            if not bad:
                raise  # not caused by one file: fail the run, record nothing
            log.warning("email_events: %d unreadable file(s): %s", len(bad), _short_reason(exc))
            rejected += bad
            read = read_export_files(spark, [f for f, reason in broken if reason is None], fmt)
            rejected += read.rejected
            readable = read.files

    batch = cached
    try:
        if batch is not None and fmt == "json":
            # A JSON-lines file without a required column in any row is not an export of
            # email events: reject it whole, as a CSV file with a wrong header is.
            wrong = {
                path: [n for n in REQUIRED_FIELDS if not s[n]]
                for path, s in stats.items()
                if not all(s[n] for n in REQUIRED_FIELDS)
            }
            if wrong:
                rejected += [
                    (path, f"JSON file lacks required column(s) {', '.join(missing)} in every row")
                    for path, missing in wrong.items()
                ]
                readable = [f for f in readable if f.path not in wrong]
                batch = batch.where(~F.col(SOURCE_FILE).isin(list(wrong)))

        _quarantine_files(spark, state, rejected, run_id)
        result.files_rejected = rejected
        if batch is not None and readable:
            _load_batch(
                spark,
                batch,
                stats,
                readable,
                result,
                table=table,
                state=state,
                source_id=source_id,
                account_id=account_id,
                run_id=run_id,
                synced_at=synced_at,
            )
            # Only now, after the MERGE committed, are the files recorded as loaded.
            crash_point("exports:merged")
            per_file = [(f, int(stats.get(f.path, {}).get("rows", 0))) for f in readable]
            record_loaded(spark, loaded_files, per_file, run_id=run_id, loaded_at=datetime.now(UTC))
            result.files_loaded = len(readable)
        elif readable:  # only empty files: nothing to merge; recorded so they are not read again
            ensure_table(spark, EMAIL_EVENTS, table)  # (a missing table means "reload all")
            per_file = [(f, 0) for f in readable]
            record_loaded(spark, loaded_files, per_file, run_id=run_id, loaded_at=datetime.now(UTC))
            result.files_loaded = len(readable)
    finally:
        if cached is not None:
            release(cached)
    return result


def _load_batch(
    spark: SparkSession,
    batch: DataFrame,
    stats: dict[str, dict[str, Any]],
    readable: list[ExportFile],
    result: EmailEventsResult,
    *,
    table: TableRef,
    state: StateStore,
    source_id: str,
    account_id: str,
    run_id: str,
    synced_at: datetime,
) -> None:
    """Quarantine the batch's bad records and MERGE the good ones; fill ``result``."""
    paths = {f.path for f in readable}
    result.rows_read = sum(int(s["rows"]) for p, s in stats.items() if p in paths)
    good, bad = split_loadable(batch)
    if any(int(s["problems"]) for p, s in stats.items() if p in paths):
        # Records that parsed but miss a field carry their fields as JSON for inspection.
        raw_json = F.to_json(F.struct(*[F.col(n) for n in RAW_FIELDS]))
        result.quarantined = state.quarantine(
            bad.select(
                SOURCE_FILE,
                PROBLEM_COLUMN,
                F.coalesce(F.col(RAW_COLUMN), raw_json).alias(RAW_COLUMN),
            ),
            stream=STREAM,
            run_id=run_id,
        )
    prepared = good.transform(
        to_target(EMAIL_EVENTS, source_id=source_id, account_id=account_id, synced_at=synced_at)
    )
    summary = prepared.agg(
        F.count(F.lit(1)).alias("rows"),
        F.coalesce(F.sum(F.size(BAD_VALUES_COLUMN)), F.lit(0)).alias("bad_values"),
        F.unix_micros(F.min("event_at")).alias("low"),
        F.unix_micros(F.max("event_at")).alias("high"),
        F.count_if(F.col("event_at").isNull()).alias("no_time"),
    ).first()
    if summary is None or not summary["rows"]:
        return
    result.bad_values = int(summary["bad_values"])
    low = None if summary["low"] is None else _micros_to_datetime(int(summary["low"]))
    high = None if summary["high"] is None else _micros_to_datetime(int(summary["high"]))
    prune = event_time_prune(low, high, has_null=bool(summary["no_time"]))
    crash_later("exports:merging")
    metrics = merge_into(spark, prepared, EMAIL_EVENTS, table, prune=prune)
    result.inserted = metrics.inserted
    result.updated = metrics.updated
    result.collapsed = metrics.collapsed


__all__ = [
    "FORMATS",
    "LOADED_FILES_SCHEMA",
    "LOADED_FILES_TABLE",
    "EmailEventsResult",
    "ExportFile",
    "ExportRead",
    "discover",
    "event_time_prune",
    "load_email_events",
    "new_files",
    "parse_header",
    "read_export_files",
    "read_first_line",
    "record_loaded",
]
