"""Table upkeep (``ometria-sync maintain``): OPTIMIZE (compaction of small files) and VACUUM
of the five data tables and the job's own, with a summary of what each step did.

Hourly runs leave many small files: each MERGE writes the files it touched, ``_sync_state``
is written over by every cursor commit and ``_sync_runs`` gains a file a run. OPTIMIZE
rewrites them into few files in one commit (rows unchanged); VACUUM then deletes the files
no version younger than ``maintenance.vacuum_retention_hours`` still needs.

No run lock is taken: Delta orders OPTIMIZE and a sync's commits (a sync's write that
loses a race with OPTIMIZE is retried: ``writer.merge_into`` for the data tables,
``delta_table.retry_on_conflict`` for cursors, quarantine and loaded files; an OPTIMIZE
that loses is reported and tried again by the next upkeep), and VACUUM with a retention of
days never deletes a file a running sync reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.delta_table import TableRef, table_exists
from ometria_spark.errors import one_line
from ometria_spark.state import (
    ERASURES_TABLE,
    LOADED_FILES_TABLE,
    QUARANTINE_TABLE,
    RUNS_TABLE,
    STATE_TABLE,
    table_ref,
)
from ometria_spark.tables import TABLES

log = logging.getLogger(__name__)

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
OWN_TABLES = (STATE_TABLE, RUNS_TABLE, QUARANTINE_TABLE, LOADED_FILES_TABLE, ERASURES_TABLE)


@dataclass
class Upkeep:
    """What ``maintain`` did to one table."""

    table: str
    files_before: int = 0  # data files in the current version
    files_after: int = 0
    vacuumed: int = 0  # files deleted from storage by VACUUM
    seconds: float = 0.0
    status: str = "done"  # done | absent | failed
    error: str | None = None


def all_tables(config: Config) -> list[tuple[str, TableRef]]:
    """Every table of a configuration: the five data tables, then the job's own."""
    names = [*TABLES, *OWN_TABLES]
    return [(name, table_ref(config, name, register=False)) for name in names]


def file_count(spark: SparkSession, ref: TableRef) -> int:
    return int(spark.sql(f"DESCRIBE DETAIL {ref.sql}").select("numFiles").first()[0])  # type: ignore[index]


@contextmanager
def _retention_check(spark: SparkSession, hours: float) -> Iterator[None]:
    """Delta refuses a VACUUM retention under 7 days unless its safety check is off: off
    for such a call (the configured retention is the user's decision), then restored."""
    if hours >= 168:
        yield
        return
    before = str(spark.conf.get(RETENTION_CHECK, "true"))
    spark.conf.set(RETENTION_CHECK, "false")
    try:
        yield
    finally:
        spark.conf.set(RETENTION_CHECK, before)


def vacuum(spark: SparkSession, ref: TableRef, retain_hours: float) -> int:
    """VACUUM the table keeping ``retain_hours`` of history; returns the files deleted (as
    its dry run listed them just before)."""
    retain = f"RETAIN {retain_hours:g} HOURS"
    with _retention_check(spark, retain_hours):
        doomed = spark.sql(f"VACUUM {ref.sql} {retain} DRY RUN").count()
        if doomed:
            spark.sql(f"VACUUM {ref.sql} {retain}").collect()
    return doomed


def maintain(spark: SparkSession, config: Config) -> list[Upkeep]:
    """OPTIMIZE then VACUUM every table that exists; a failure is reported per table."""
    done = []
    for name, ref in all_tables(config):
        upkeep = Upkeep(name)
        started = time.monotonic()
        try:
            if not table_exists(spark, ref):
                upkeep.status = "absent"
            else:
                upkeep.files_before = file_count(spark, ref)
                spark.sql(f"OPTIMIZE {ref.sql}").collect()
                upkeep.files_after = file_count(spark, ref)
                upkeep.vacuumed = vacuum(spark, ref, config.maintenance.vacuum_retention_hours)
        except Exception as exc:  # one table's failure must not stop the others' upkeep
            upkeep.status, upkeep.error = "failed", one_line(exc, "")
            log.error("%s: upkeep failed: %s", name, upkeep.error)
        upkeep.seconds = time.monotonic() - started
        done.append(upkeep)
    return done


def summary(done: list[Upkeep]) -> str:
    """The per-table lines printed by ``ometria-sync maintain``."""
    lines = [f"{'table':<15}{'status':<8}{'files before':>13}{'after':>7}{'vacuumed':>10}{'s':>7}"]
    for u in done:
        lines.append(
            f"{u.table:<15}{u.status:<8}{u.files_before:>13}{u.files_after:>7}"
            f"{u.vacuumed:>10}{u.seconds:>7.1f}"
        )
        if u.error:
            lines.append(f"  ! {u.table}: {u.error}")
    return "\n".join(lines)
