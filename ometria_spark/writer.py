"""The one MERGE writer: create the Delta table if absent, then UPSERT on the sync key."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce

from delta.exceptions import DeltaConcurrentModificationException
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.spark import release
from ometria_spark.storage import LocalStorage, Storage, local_root
from ometria_spark.tables import KEY_COLUMN, SYNCED_AT, TableSpec
from ometria_spark.transforms import (
    collapsed_records,
    finalize,
    has_repeated_keys,
    latest_per_key,
    validate_columns,
)

log = logging.getLogger(__name__)


# Delta's optimistic-concurrency conflicts, by Java class name: depending on the call path
# PySpark hands them over converted or as a raw Py4JJavaError.
_CONFLICTS = (
    "io.delta.exceptions.Concurrent",
    "io.delta.exceptions.DeltaConcurrentModificationException",
    "io.delta.exceptions.MetadataChangedException",
    "io.delta.exceptions.ProtocolChangedException",
)


def is_write_conflict(exc: BaseException) -> bool:
    """True when a Delta commit lost a race with another writer (safe to retry)."""
    if isinstance(exc, DeltaConcurrentModificationException):
        return True
    java = getattr(exc, "java_exception", None)
    return java is not None and str(java.toString()).startswith(_CONFLICTS)


@dataclass
class _Seen:
    value: bool = False
    # Created through this ref and not written since: empty (``merge_into`` clears it).
    created: bool = False


@dataclass(frozen=True)
class TableRef:
    """Where a table lives: a Delta path (``is_path``) or a catalog name."""

    location: str
    is_path: bool
    # In path mode, also registered under this name in the session catalog (may be None).
    catalog_name: str | None = None
    # In path mode, the table folder's files as Python sees them (to clear what a run killed
    # while creating the table left); local paths need none, other schemes go without.
    files: Storage | None = field(default=None, compare=False)
    # Set once this ref's table was found or created (and registered): later writes through
    # the same ref skip the catalog and storage checks. A run makes its refs once
    # (``state.StateStore.ref``), so this lives as long as the run.
    seen: _Seen = field(default_factory=lambda: _Seen(), compare=False, repr=False)
    # The run's phase hook (``ometria_spark.phases``): told when the table is created.
    on_phase: PhaseHook = field(default=no_hook, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[-1]

    @property
    def sql(self) -> str:
        """The table in SQL: ``delta.`path``` or the quoted catalog name."""
        if self.is_path:
            return "delta." + _quote(self.location)
        return ".".join(_quote(n) for n in self.location.split("."))


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


def table_exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.is_path:
        return bool(DeltaTable.isDeltaTable(spark, ref.location))
    return bool(spark.catalog.tableExists(ref.location))


def create_if_absent(
    spark: SparkSession,
    ref: TableRef,
    schema: StructType,
    cluster_by: tuple[str, ...] = (),
    properties: Mapping[str, str] | None = None,
) -> DeltaTable:
    """Open the Delta table at ``ref``, creating it with ``schema`` (and table
    ``properties``) first if needed; in path mode also register its catalog name (if the
    ref has one). An existing table keeps its properties."""
    if ref.seen.value:
        try:
            return open_table(spark, ref)
        except Exception:  # removed since: check and create again
            ref.seen.value = False
    existing = _open_existing(spark, ref)
    if existing is None:
        if ref.is_path:
            _clear_uncommitted(ref)
        ref.on_phase(phase_name("creating:{table}", table=ref.name))
        builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
        builder = builder.location(ref.location) if ref.is_path else builder.tableName(ref.location)
        if cluster_by:
            builder = builder.clusterBy(*cluster_by)
        for key, value in (properties or {}).items():
            builder = builder.property(key, value)
        builder.execute()
        ref.seen.created = True
    if ref.is_path and ref.catalog_name:
        register(spark, ref)
    table = existing or open_table(spark, ref)
    ref.seen.value = True
    return table


def _open_existing(spark: SparkSession, ref: TableRef) -> DeltaTable | None:
    """The table if it exists. A path is opened at once (one snapshot read instead of a
    check and then a read: half a second on a cold JVM)."""
    if not ref.is_path:
        return open_table(spark, ref) if table_exists(spark, ref) else None
    try:
        return DeltaTable.forPath(spark, ref.location)
    except AnalysisException:  # "... is not a Delta table" (no table there yet)
        return None


# A commit of a Delta table: a version file, a checkpoint, a staged (coordinated) commit.
_COMMIT = re.compile(
    r"^_delta_log/(\d{20}\.json|\d{20}\.checkpoint.*|_last_checkpoint|_staged_commits/.+\.json)$"
)


def _clear_uncommitted(ref: TableRef) -> None:
    """Make a table folder without any commit (a run killed while creating the table left
    ``_delta_log/`` without its first commit) absent again, so the table can be created:
    Delta would take the folder for a table it cannot find, on every later run. Files other
    than Delta's log in such a folder are not ours: that is an error naming them."""
    location = ref.location.rstrip("/")
    files = ref.files
    if files is None and "://" not in location.replace("file://", "", 1):
        files = LocalStorage()
        location = local_root(location)
    if files is None:
        return
    names = files.list_tree(location)
    if any(_COMMIT.match(name) for name in names):
        return  # a table after all: let Delta open it (or say what is wrong)
    strays = [name for name in names if not name.startswith("_delta_log/")]
    if strays:
        raise RuntimeError(
            f"{ref.location} holds files ({', '.join(strays[:3])}) but no Delta commit: "
            "it is not a table; move them away or choose another storage.tables_path"
        )
    if files.remove_tree(f"{location}/_delta_log"):
        log.warning("%s: a table folder without a commit (a run was killed while creating "
                    "it); creating the table again", ref.location)  # fmt: skip


def table_version(spark: SparkSession, ref: TableRef) -> dict[str, object] | None:
    """The table's latest version and its commit time (None: no table there)."""
    try:
        row = spark.sql(f"DESCRIBE HISTORY {ref.sql} LIMIT 1").select("version", "timestamp")
        last = row.first()
    except AnalysisException:
        return None
    if last is None:
        return None
    return {"version": int(last["version"]), "committed": str(last["timestamp"])}


def ensure_table(spark: SparkSession, spec: TableSpec, ref: TableRef) -> DeltaTable:
    """Create the table with the spec's schema if it does not exist, and check its columns."""
    table = create_if_absent(spark, ref, spec.schema, spec.cluster_by, spec.properties)
    validate_columns(table.toDF(), spec)
    return table


def register(spark: SparkSession, ref: TableRef) -> None:
    """Make a path table queryable by name (``spark.table('ometria.profiles')``)."""
    assert ref.catalog_name is not None
    if spark.catalog.tableExists(ref.catalog_name):
        return
    *namespace, _ = ref.catalog_name.split(".")
    if namespace:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {'.'.join(_quote(n) for n in namespace)}")
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {'.'.join(_quote(n) for n in ref.catalog_name.split('.'))} "
        f"USING DELTA LOCATION '{ref.location.replace(chr(39), '')}'"
    )


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def open_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    if ref.is_path:
        return DeltaTable.forPath(spark, ref.location)
    return DeltaTable.forName(spark, ref.location)


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
    for attempt in range(1, attempts + 1):
        try:
            fresh, ref.seen.created = ref.seen.created, False
            metrics = _upsert(table, source, spec, condition, fresh=fresh, source_rows=keys)
            return MergeMetrics(metrics.affected, metrics.inserted, metrics.updated, collapsed)
        except Exception as exc:
            if attempt == attempts or not is_write_conflict(exc):
                raise
            log.warning("%s: concurrent write (%s); retrying MERGE", spec.name, type(exc).__name__)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _upsert(
    table: DeltaTable,
    source: DataFrame,
    spec: TableSpec,
    condition: Column,
    *,
    fresh: bool = False,
    source_rows: int | None = None,
) -> MergeMetrics:
    """``fresh``: just created, so empty; ``source_rows``: the de-duplicated source's rows
    (the insert-only MERGE's count then shows whether it inserted all). No history reads."""
    done = MergeMetrics(0, 0, 0)
    if fresh or _never_written(table):
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
    # recompute the source and the join.
    changes = _changed_rows(table, source, spec, condition).localCheckpoint(eager=True)
    try:
        if changes.isEmpty():
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
