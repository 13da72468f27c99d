"""The load of the export files: new files -> read once -> reject/quarantine -> MERGE
into ``email_events`` -> recorded as loaded (only after the MERGE committed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.delta_table import TableRef, table_exists
from ometria_spark.errors import root_cause
from ometria_spark.exports.files import ExportFile, discover
from ometria_spark.exports.ledger import Listing, new_files, record_loaded
from ometria_spark.exports.reading import (
    RAW_FIELDS,
    REQUIRED_FIELDS,
    count_alone,
    read_export_files,
)
from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.spark import local_frame, release, string_schema
from ometria_spark.state import StateStore
from ometria_spark.tables import EMAIL_EVENTS, KEY_COLUMN
from ometria_spark.transforms import (
    BAD_VALUES_COLUMN,
    PROBLEM_COLUMN,
    RAW_COLUMN,
    SOURCE_FILE,
    blank_to_null,
    split_loadable,
    to_target,
    with_problems,
)
from ometria_spark.writer import SourceCounts, ensure_table, merge_into

log = logging.getLogger(__name__)

STREAM = "email_events"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
class _Batch:
    """The new files read once (a local checkpoint), with each file's stats; the files
    that load and the ones rejected (path, reason)."""

    records: DataFrame | None
    stats: dict[str, dict[str, Any]]
    readable: list[ExportFile]
    rejected: list[tuple[str, str]]

    def __post_init__(self) -> None:
        self._checkpoint = self.records  # ``records`` may be narrowed down later

    def release(self) -> None:
        if self._checkpoint is not None:
            release(self._checkpoint)


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
    rows = local_frame(
        spark,
        [(path, reason, path) for path, reason in rejected],
        string_schema(SOURCE_FILE, PROBLEM_COLUMN, RAW_COLUMN),
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
    on_phase: PhaseHook = no_hook,
) -> EmailEventsResult:
    """Load the export files under ``root`` not loaded before (all of them on a full
    refresh) into the ``email_events`` table, and record them in ``loaded_files``.

    Bad records are quarantined; files that cannot be read (no header, a required column
    missing, a truncated gzip) are rejected: reported, quarantined as one row each, not
    recorded, while every other file loads. With no new file, nothing is read or merged.
    """
    now = datetime.now(UTC)
    listing = Listing.read(state.config, root, now, full_refresh)
    files = discover(spark, root, None if listing.full else listing.start)
    if not full_refresh and not table_exists(spark, table) and table_exists(spark, loaded_files):
        # The table is gone (dropped by hand, or a new storage.tables_path) while the files
        # are recorded as loaded: load them all again, or the table would stay empty.
        log.warning("email_events: its table is missing while _loaded_files records loaded "
                    "files; loading every file again")  # fmt: skip
        full_refresh = True
    todo = new_files(spark, files, loaded_files, full_refresh=full_refresh)
    result = EmailEventsResult(files_seen=len(files), files_loaded=0, files_new=len(todo))
    if not todo:
        listing.save(files, now)
        return result
    batch = _read_once(spark, todo, fmt)
    try:
        if fmt == "json":
            _reject_json_without_fields(batch)
        _quarantine_files(spark, state, batch.rejected, run_id)
        result.files_rejected = batch.rejected
        if batch.readable:
            if batch.records is not None:
                _load_batch(spark, batch, result, table=table, state=state, source_id=source_id,
                            account_id=account_id, run_id=run_id, synced_at=synced_at,
                            on_phase=on_phase)  # fmt: skip
                # Only now, after the MERGE committed, are the files recorded as loaded.
                on_phase(phase_name("exports:merged"))
            else:  # only empty files: nothing to merge; recorded so they are not read again
                ensure_table(spark, EMAIL_EVENTS, table)  # (missing table: "reload all")
            per_file = [(f, int(batch.stats.get(f.path, {}).get("rows", 0)))
                        for f in batch.readable]  # fmt: skip
            record_loaded(spark, loaded_files, per_file, run_id=run_id,
                          loaded_at=datetime.now(UTC))  # fmt: skip
            result.files_loaded = len(batch.readable)
    finally:
        batch.release()
    listing.save(files, now, [path for path, _ in result.files_rejected])
    return result


def _read_once(spark: SparkSession, files: list[ExportFile], fmt: str) -> _Batch:
    """Read the files once and keep them (memory, spilling to disk) for the passes of the
    load; a file that breaks the read (a truncated gzip) is found and rejected."""
    read = read_export_files(spark, files, fmt)
    rejected = list(read.rejected)
    readable = read.files
    while read.records is not None:
        # A local checkpoint, not .cache(): Delta fails a MERGE whose source plan holds a
        # cached relation unless it copies that source yet again (merge.materializeSource),
        # while a checkpoint is a plain, stable RDD to it.
        cached = read.records.transform(with_problems(EMAIL_EVENTS)).localCheckpoint(eager=False)
        try:
            # The one pass over the files in the normal case: it fills the checkpoint and
            # is where a broken file (a truncated gzip) makes Spark's read fail.
            return _Batch(cached, _file_stats(cached), readable, rejected)
        except Exception as exc:  # Spark wraps I/O errors in several exception types
            release(cached)
            # Only now is each file read alone, to find the broken one(s).
            broken = [(f, count_alone(spark, f, fmt)) for f in readable]
            bad = [(f.path, reason) for f, reason in broken if reason is not None]
            if not bad:
                raise  # not caused by one file: fail the run, record nothing
            log.warning("email_events: %d unreadable file(s): %s", len(bad), root_cause(exc))
            rejected += bad
            read = read_export_files(spark, [f for f, reason in broken if reason is None], fmt)
            rejected += read.rejected
            readable = read.files
    return _Batch(None, {}, readable, rejected)


def _reject_json_without_fields(batch: _Batch) -> None:
    """A JSON-lines file without a required column in any row is not an export of email
    events: reject it whole, as a CSV file with a wrong header is."""
    if batch.records is None:
        return
    wrong = {
        path: [n for n in REQUIRED_FIELDS if not s[n]]
        for path, s in batch.stats.items()
        if not all(s[n] for n in REQUIRED_FIELDS)
    }
    if not wrong:
        return
    batch.rejected += [
        (path, f"JSON file lacks required column(s) {', '.join(missing)} in every row")
        for path, missing in wrong.items()
    ]
    batch.readable = [f for f in batch.readable if f.path not in wrong]
    batch.records = batch.records.where(~F.col(SOURCE_FILE).isin(list(wrong)))


def _load_batch(
    spark: SparkSession,
    batch: _Batch,
    result: EmailEventsResult,
    *,
    table: TableRef,
    state: StateStore,
    source_id: str,
    account_id: str,
    run_id: str,
    synced_at: datetime,
    on_phase: PhaseHook,
) -> None:
    """Quarantine the batch's bad records and MERGE the good ones; fill ``result``."""
    assert batch.records is not None
    paths = {f.path for f in batch.readable}
    stats = [s for p, s in batch.stats.items() if p in paths]
    result.rows_read = sum(int(s["rows"]) for s in stats)
    good, bad = split_loadable(batch.records)
    if any(int(s["problems"]) for s in stats):
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
        F.count_distinct(KEY_COLUMN).alias("keys"),  # (merge_into: does a key repeat?)
    ).first()
    if summary is None or not summary["rows"]:
        return
    result.bad_values = int(summary["bad_values"])
    low = None if summary["low"] is None else _micros_to_datetime(int(summary["low"]))
    high = None if summary["high"] is None else _micros_to_datetime(int(summary["high"]))
    prune = event_time_prune(low, high, has_null=bool(summary["no_time"]))
    on_phase(phase_name("exports:merging"))
    counts = SourceCounts(int(summary["rows"]), int(summary["keys"]))
    metrics = merge_into(spark, prepared, EMAIL_EVENTS, table, prune=prune, counts=counts)
    result.inserted = metrics.inserted
    result.updated = metrics.updated
    result.collapsed = metrics.collapsed
