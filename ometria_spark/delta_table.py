"""Where a Delta table lives and how it comes to exist: ``TableRef`` (a path or a catalog
name, with what this run learned of the table), create-if-absent (clearing what a run killed
while creating a table left), open, register by name, and the latest version."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from delta.exceptions import DeltaConcurrentModificationException
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrameWriter, SparkSession
from pyspark.sql.types import StructType

from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.storage import LocalStorage, Storage, local_root

log = logging.getLogger(__name__)
T = TypeVar("T")

# Delta's optimistic-concurrency conflicts, by Java class name: depending on the call path
# PySpark hands them over converted or as a raw Py4JJavaError.
_CONFLICTS = (
    "io.delta.exceptions.Concurrent",
    "io.delta.exceptions.DeltaConcurrentModificationException",
    "io.delta.exceptions.MetadataChangedException",
    "io.delta.exceptions.ProtocolChangedException",
)


# The same, as Python exception class names (delta.exceptions: captured on a classic
# session, its base classes elsewhere) and as Spark error conditions (Spark Connect).
_CONFLICT_NAMES = frozenset(name.rsplit(".", 1)[-1] for name in _CONFLICTS[1:])
_CONFLICT_CONDITIONS = ("DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED")


def is_write_conflict(exc: BaseException) -> bool:
    """True when a Delta commit lost a race with another writer (safe to retry)."""
    if isinstance(exc, DeltaConcurrentModificationException):
        return True
    name = type(exc).__name__
    if name.startswith("Concurrent") or name in _CONFLICT_NAMES:
        return True
    condition = getattr(exc, "getCondition", lambda: None)()
    if isinstance(condition, str) and condition.startswith(_CONFLICT_CONDITIONS):
        return True
    java = getattr(exc, "java_exception", None)
    return java is not None and str(java.toString()).startswith(_CONFLICTS)


def write_to(writer: DataFrameWriter, ref: TableRef) -> None:
    """Run a Delta ``writer`` into the table ``ref`` names: its path, or its catalog name."""
    if ref.is_path:
        writer.save(ref.location)
    else:
        writer.saveAsTable(ref.location)


def retry_on_conflict(what: str, write: Callable[[], T], attempts: int = 3) -> T:
    """``write()``, again (up to ``attempts`` times in all) while its Delta commit loses a
    race with another writer: a concurrent ``maintain`` (OPTIMIZE) or a user's own job. For
    writes that are idempotent or recomputed from the caller's state on each call."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except Exception as exc:
            if attempt == attempts or not is_write_conflict(exc):
                raise
            log.warning("%s: concurrent write (%s); retrying", what, type(exc).__name__)
            time.sleep(attempt)
    raise AssertionError("unreachable")


@dataclass
class _Seen:
    value: bool = False
    # Created through this ref and not written since: empty (``merge_into`` clears it).
    created: bool = False
    # The table's version when this run last read it (``table_version``): versions only
    # grow, so one past 0 means the table has been written to since its creation.
    version: int | None = None


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
    ref.seen.version = int(last["version"])
    return {"version": ref.seen.version, "committed": str(last["timestamp"])}


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
