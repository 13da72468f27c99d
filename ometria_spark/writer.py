"""The one MERGE writer of the data tables: the table (created if absent, its columns
checked), then an UPSERT on the sync key that rewrites only rows that changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.delta_table import TableRef, create_if_absent, retry_on_conflict
from ometria_spark.spark import release
from ometria_spark.tables import KEY_COLUMN, SYNCED_AT, TableSpec
from ometria_spark.transforms import (
    collapsed_records,
    finalize,
    has_repeated_keys,
    latest_per_key,
    validate_columns,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceCounts:
    """What the caller's own pass over a MERGE source counted (saves ``merge_into`` a Spark
    job of its own): its rows, and its distinct keys."""

    rows: int
    keys: int


@dataclass(frozen=True)
class MergeMetrics:
    affected: int
    inserted: int
    updated: int
    # Source records that the key made one row with another, different, record (see
    # ``TableSpec.collision_columns``): all but the latest are lost to the table.
    collapsed: int = 0


def ensure_table(spark: SparkSession, spec: TableSpec, ref: TableRef) -> DeltaTable:
    """Create the table with the spec's schema if it does not exist, and check its columns."""
    table = create_if_absent(spark, ref, spec.schema, spec.cluster_by, spec.properties)
    validate_columns(table.toDF(), spec)
    return table


def changed(spec: TableSpec) -> Column:
    """True when any column other than the write time differs (NULL-safe)."""
    same = [
        F.col(f"t.{c}").eqNullSafe(F.col(f"s.{c}"))
        for c in spec.column_names
        if c not in (KEY_COLUMN, SYNCED_AT)
    ]
    return ~reduce(lambda a, b: a & b, same)


def merge_into(
    spark: SparkSession,
    source: DataFrame,
    spec: TableSpec,
    ref: TableRef,
    *,
    prune: Column | None = None,
    counts: SourceCounts | None = None,
    attempts: int = 3,
) -> MergeMetrics:
    """UPSERT ``source`` (the spec's columns, optionally ``_fetch_order``) into the table.

    The source is de-duplicated first: of the rows sharing a key, the one fetched last wins
    (Delta fails a MERGE where two source rows match one target row). A matched row is
    rewritten only when one of its values changed, so re-merging the same batch changes
    nothing (and commits nothing). ``prune`` is an extra predicate on the
    target (``t.``) that narrows the files the MERGE reads. ``counts``, when the caller
    has them, say whether a key repeats (without a job of its own). Concurrent-write
    conflicts are retried; MERGE is idempotent, so a retry cannot duplicate rows.
    """
    # De-duplicating sorts every row by key: only when a key repeats (as the caller's counts
    # say, or a job that only shuffles the keys).
    collapsed = 0
    repeated = counts.keys < counts.rows if counts is not None else has_repeated_keys(source)
    if repeated:
        collapsed = collapsed_records(source, spec)
        if collapsed:
            log.warning(
                "%s: %d record(s) had the key of another, different, record of the same "
                "load; the latest of each key is kept",
                spec.name,
                collapsed,
            )
        source = source.transform(latest_per_key())
    source = source.transform(finalize(spec))
    validate_columns(source, spec)
    table = ensure_table(spark, spec, ref)
    condition = F.col(f"t.{KEY_COLUMN}") == F.col(f"s.{KEY_COLUMN}")
    if prune is not None:
        condition = condition & prune
    keys = counts.keys if counts is not None else None

    def attempt() -> MergeMetrics:
        fresh, ref.seen.created = ref.seen.created, False
        # Past version 0 since the run began: written before, not a first load (a table
        # re-created behind the run's back just takes the full upsert, always right).
        written = (ref.seen.version or 0) > 0
        metrics = _upsert(
            table, source, spec, condition, fresh=fresh, written=written, source_rows=keys
        )
        return MergeMetrics(metrics.affected, metrics.inserted, metrics.updated, collapsed)

    return retry_on_conflict(spec.name, attempt, attempts)


def _upsert(
    table: DeltaTable,
    source: DataFrame,
    spec: TableSpec,
    condition: Column,
    *,
    fresh: bool = False,
    written: bool = False,
    source_rows: int | None = None,
) -> MergeMetrics:
    """``fresh``: just created, so empty; ``written``: known to have been written since
    its creation (no history read to tell); ``source_rows``: the de-duplicated source's
    rows (the insert-only MERGE's count then shows whether it inserted all)."""
    done = MergeMetrics(0, 0, 0)
    if fresh or (not written and _never_written(table)):
        # A first load. An upsert in which no source row matches a target row inserts every
        # source row and nothing else; an insert-only MERGE does just that, without the
        # full MERGE's materialized source, second join and outer join. Its own commit
        # shows whether that held (every source row inserted); if the table gained rows
        # in the meantime, the full upsert below finishes the job (re-merging is harmless).
        inserted = merge_metrics(
            table.alias("t").merge(source.alias("s"), condition).whenNotMatchedInsertAll().execute()
        )
        if (
            inserted.inserted == source_rows
            if source_rows is not None
            else _last_merge_inserted_all(table)
        ):
            return inserted
        done = inserted
    # Rows equal to the table's already are dropped before the MERGE: they are not
    # rewritten (their __synced_at stays), Delta does not touch the files holding them, and
    # a batch with nothing new (the hourly re-read) commits nothing at all. Kept (a local
    # checkpoint: a plain RDD to the MERGE), so that the check and the MERGE do not each
    # recompute the source and the join; the count that looks for changes fills it (one
    # job for both).
    changes = _changed_rows(table, source, spec, condition).localCheckpoint(eager=False)
    try:
        if changes.count() == 0:
            return done
        # Every matched row of `changes` differs from the table's (the join above), so the
        # update needs no condition of its own; one that compares every column costs the
        # MERGE about 3x (it makes each of its joins read and compare all columns).
        merged = merge_metrics(
            table.alias("t")
            .merge(changes.alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )
    finally:
        release(changes)
    return MergeMetrics(
        affected=done.affected + merged.affected,
        inserted=done.inserted + merged.inserted,
        updated=done.updated + merged.updated,
    )


def _changed_rows(
    table: DeltaTable, source: DataFrame, spec: TableSpec, condition: Column
) -> DataFrame:
    """The source rows that are new or differ from the table's row of the same key.

    Written as target-semi-join-source, then source-anti-join-those-keys, rather than one
    source-anti-join-target: the side Spark can broadcast in a semi or anti join is the
    right one, and a batch is small next to its table, so the table is scanned once
    without being shuffled.
    """
    same = (
        table.toDF()
        .alias("t")
        .join(source.alias("s"), condition & ~changed(spec), "left_semi")
        .select(F.col(KEY_COLUMN))
    )
    return source.join(same, KEY_COLUMN, "left_anti")


def _never_written(table: DeltaTable) -> bool:
    """True when the table's only commit is its creation (ours creates it empty). One
    commit of history: cheaper than DESCRIBE DETAIL, which computes the table's state."""
    last = table.history(1).select("version", "operation").first()
    return last is not None and last["version"] == 0 and last["operation"] == "CREATE TABLE"


def _last_merge_inserted_all(table: DeltaTable) -> bool:
    """True when the table's latest commit is a MERGE that inserted every source row."""
    last = table.history(1).select("operation", "operationMetrics").first()
    if last is None or last["operation"] != "MERGE":
        return False
    metrics = last["operationMetrics"] or {}
    source_rows = metrics.get("numSourceRows")
    return source_rows is not None and metrics.get("numTargetRowsInserted") == source_rows


def merge_metrics(result: DataFrame) -> MergeMetrics:
    """The counts of the DataFrame ``DeltaMergeBuilder.execute()`` returns."""
    row = result.first()
    if row is None:
        return MergeMetrics(0, 0, 0)
    values = row.asDict()
    inserted = int(values.get("num_inserted_rows") or 0)
    updated = int(values.get("num_updated_rows") or 0)
    affected = int(values.get("num_affected_rows") or 0)
    return MergeMetrics(affected=affected, inserted=inserted, updated=updated)
