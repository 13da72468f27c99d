"""The job's own Delta tables beside the data: cursors, run records, quarantine.

- ``_sync_state``: one row per (stream, scope) with the cursor to resume from. Written only
  after the MERGE of the data it covers has committed.
- ``_sync_runs``: one row per run and stream: what happened, with Delta's merge metrics,
  appended in one commit when the run ends (a killed run leaves none).
- ``_quarantine``: records and files that could not load, with the reason and raw text.
  Keyed by md5(stream, source, reason, raw text), the source being the API endpoint (not
  the page, nor its run) or the export file: the same bad record read again, by a re-merge
  or by a later run's pull, is quarantined once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from ometria_spark.config import Config
from ometria_spark.delta_table import (
    TableRef,
    create_if_absent,
    open_table,
    retry_on_conflict,
    write_to,
)
from ometria_spark.phases import PhaseHook, no_hook
from ometria_spark.spark import local_frame
from ometria_spark.storage import storage_for

STATE_TABLE = "_sync_state"
RUNS_TABLE = "_sync_runs"
QUARANTINE_TABLE = "_quarantine"
LOADED_FILES_TABLE = "_loaded_files"
ERASURES_TABLE = "_erasures"

STATE_SCHEMA = StructType(
    [
        StructField("stream", StringType()),
        StructField("scope", StringType()),
        StructField("cursor", StringType()),
        StructField("run_id", StringType()),
        StructField("updated_at", TimestampType()),
    ]
)

QUARANTINE_SCHEMA = StructType(
    [
        StructField("quarantine_id", StringType()),
        StructField("stream", StringType()),
        StructField("run_id", StringType()),
        StructField("source_file", StringType()),
        StructField("reason", StringType()),
        StructField("raw", StringType()),
        StructField("quarantined_at", TimestampType()),
    ]
)

# Statistics on these columns only: min/max of ``raw`` (its first 32 characters) would put
# personal data in the Delta log, where an erasure cannot reach it (see ``erase``).
QUARANTINE_PROPERTIES = {
    "delta.dataSkippingStatsColumns": "quarantine_id,stream,run_id,quarantined_at"
}

log = logging.getLogger(__name__)


@dataclass
class MergeCounts:
    """What loading one stream did (one or more pulls, or the export files): the counts a
    ``RunRecord`` takes."""

    pages: int = 0
    records_read: int = 0
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    bad_values: int = 0
    collapsed: int = 0
    warnings: list[str] = field(default_factory=list)

    def add(self, other: MergeCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RunRecord:
    """One row of ``_sync_runs``."""

    run_id: str
    stream: str
    started_at: datetime
    ended_at: datetime | None = None
    status: str = "running"
    pages: int = 0
    files: int = 0
    records_read: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    quarantined: int = 0
    bad_values: int = 0
    # Records that the spec's key made one row with another, different, record of the same
    # load (two campaigns emailing one address in one second): the later one is kept.
    collapsed: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    error: str | None = None
    warnings: str | None = None

    def take(self, counts: MergeCounts) -> None:
        """Copy a stream's counts into its row (and log its warnings)."""
        self.pages = counts.pages
        self.records_read = counts.records_read
        self.rows_inserted = counts.inserted
        self.rows_updated = counts.updated
        self.quarantined = counts.quarantined
        self.bad_values = counts.bad_values
        self.collapsed = counts.collapsed
        self.warnings = "; ".join(counts.warnings) or None
        for warning in counts.warnings:
            log.warning("%s: %s", self.stream, warning)


RUNS_SCHEMA = StructType(
    [
        StructField(
            f.name,
            TimestampType()
            if f.name in ("started_at", "ended_at")
            else LongType()
            if f.type in (int, "int")
            else StringType(),
        )
        for f in fields(RunRecord)
    ]
)


def table_ref(config: Config, table: str, *, register: bool = True) -> TableRef:
    """Where one of the job's tables (data or state) lives for this config. A path table is
    also registered by name in the session catalog unless ``register`` is false (a process
    whose in-memory catalog ends with it: the names would die unseen, and registering
    costs a second or two of catalog work on a cold JVM)."""
    tables_path = config.storage.tables_path
    if tables_path:
        files = (
            storage_for(tables_path, config.storage.s3_endpoint, config.storage.s3_region)
            if tables_path.startswith(("s3://", "s3a://"))
            else None
        )
        return TableRef(
            config.table_location(table),
            is_path=True,
            catalog_name=config.table_name(table) if register else None,
            files=files,
        )
    return TableRef(config.table_name(table), is_path=False)


class StateStore:
    """Cursors, run records and quarantine for one configuration."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        *,
        register_names: bool = True,
        on_phase: PhaseHook = no_hook,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.spark = spark
        # Called before each cursor commit: raises when this run no longer holds the lock.
        self.guard = guard
        self.config = config
        self.register_names = register_names
        self.on_phase = on_phase
        self._refs: dict[str, TableRef] = {}
        self.state_ref = self.ref(STATE_TABLE)
        self.runs_ref = self.ref(RUNS_TABLE)
        self.quarantine_ref = self.ref(QUARANTINE_TABLE)
        self._ready: set[str] = set()
        self._rows: dict[tuple[str, str], tuple[object, ...]] | None = None
        # The data tables' versions, as this run read or wrote them (see load.version_in_run).
        self.versions: dict[str, dict[str, object] | None] = {}

    def ref(self, table: str) -> TableRef:
        """Where ``table`` lives, one ref per table for the life of this store (a run)."""
        if table not in self._refs:
            ref = table_ref(self.config, table, register=self.register_names)
            self._refs[table] = replace(ref, on_phase=self.on_phase)
        return self._refs[table]

    def _table(
        self, ref: TableRef, schema: StructType, properties: dict[str, str] | None = None
    ) -> DeltaTable:
        """The table, created on first use (checked once per store, not per call)."""
        if ref.location in self._ready:
            return open_table(self.spark, ref)
        table = create_if_absent(self.spark, ref, schema, properties=properties)
        self._ready.add(ref.location)
        return table

    # --- cursors ---------------------------------------------------------------------

    def cursors(self, stream: str) -> dict[str, str]:
        """{scope: cursor} of a stream ('' is the scope of single-cursor streams).

        The state table is read once per store; later calls see this store's own writes.
        """
        return {
            scope: str(row[2])
            for (name, scope), row in self._state().items()
            if name == stream and row[2] is not None
        }

    def _state(self) -> dict[tuple[str, str], tuple[object, ...]]:
        """Every row of ``_sync_state`` by (stream, scope), read on first use."""
        if self._rows is None:
            table = self._table(self.state_ref, STATE_SCHEMA)
            names = STATE_SCHEMA.fieldNames()
            self._rows = {
                (row["stream"], row["scope"]): tuple(row)
                for row in table.toDF().select(*names).collect()
            }
        return self._rows

    def set_cursors(self, stream: str, cursors: dict[str, str], run_id: str) -> None:
        """Save cursors of a stream in one Delta commit: the whole (small) table written
        over with this run's copy of it. The run holding the lock is the only writer of
        ``_sync_state``; an overwrite is one write job, where a MERGE would read, join and
        rewrite (about half the time on a cold JVM, measured)."""
        if not cursors:
            return
        self.guard()
        rows = dict(self._state())
        now = datetime.now().astimezone()
        for scope, value in cursors.items():
            rows[(stream, scope)] = (stream, scope, value, run_id, now)
        frame = local_frame(self.spark, rows.values(), STATE_SCHEMA)
        writer = frame.write.format("delta").mode("overwrite")
        retry_on_conflict(STATE_TABLE, lambda: write_to(writer, self.state_ref))
        self._rows = rows

    def reset(self, stream: str) -> None:
        """Forget a stream's cursors (``--full-refresh``)."""
        self.guard()
        table = self._table(self.state_ref, STATE_SCHEMA)
        retry_on_conflict(STATE_TABLE, lambda: table.delete(F.col("stream") == stream))
        if self._rows is not None:
            self._rows = {key: row for key, row in self._rows.items() if key[0] != stream}

    # --- runs ------------------------------------------------------------------------

    def record_runs(self, records: list[RunRecord]) -> None:
        """Append the run's records (one row per stream) in one commit."""
        if not records:
            return
        self._table(self.runs_ref, RUNS_SCHEMA)
        rows = [asdict(record) for record in records]
        df = local_frame(
            self.spark, [tuple(row[f.name] for f in RUNS_SCHEMA) for row in rows], RUNS_SCHEMA
        )
        # mergeSchema: a table written by an earlier version gains the newer columns.
        writer = df.write.format("delta").mode("append").option("mergeSchema", "true")
        write_to(writer, self.runs_ref)

    # --- quarantine ------------------------------------------------------------------

    def quarantine(self, rows: DataFrame, *, stream: str, run_id: str) -> int:
        """Add rows with ``_source_file``, ``_source`` (the endpoint or export file the
        record came from; its identity with the reason and text), ``_problem`` and ``_raw``;
        returns how many distinct items were given (the same record again adds no row)."""
        table = self._table(self.quarantine_ref, QUARANTINE_SCHEMA, QUARANTINE_PROPERTIES)
        given = [F.col(c) for c in ("_source", "_source_file") if c in rows.columns]
        source = F.coalesce(*given, F.lit(""))
        prepared = (
            rows.select(
                F.md5(
                    F.concat_ws(
                        "\u0001",
                        F.lit(stream),
                        source,
                        F.col("_problem"),
                        F.coalesce(F.col("_raw"), F.lit("")),
                    )
                ).alias("quarantine_id"),
                F.lit(stream).alias("stream"),
                F.lit(run_id).alias("run_id"),
                F.col("_source_file").alias("source_file"),
                F.col("_problem").alias("reason"),
                F.col("_raw").alias("raw"),
                F.current_timestamp().alias("quarantined_at"),
            )
            .dropDuplicates(["quarantine_id"])
            .cache()
        )
        count = prepared.count()
        if count:
            merge = (
                table.alias("t")
                .merge(prepared.alias("s"), "t.quarantine_id = s.quarantine_id")
                .whenNotMatchedInsertAll()
            )
            retry_on_conflict(QUARANTINE_TABLE, merge.execute)
        prepared.unpersist()
        return count
