"""The load step of an API pull: landed pages -> read -> transform -> quarantine what
cannot load -> MERGE -> cursor -> pull marked merged, in that order.

The cursor moves only after the MERGE has committed, and a pull is marked merged only
after its cursor is saved, so a crash at any point is harmless (see ``sync``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.config import Config
from ometria_spark.delta_table import TableRef, table_version
from ometria_spark.landing import Landing, Plan
from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.readers import read_records
from ometria_spark.spark import local_frame, release, string_schema
from ometria_spark.state import MergeCounts, StateStore
from ometria_spark.streams import api_stream
from ometria_spark.tables import KEY_COLUMN, TABLES
from ometria_spark.transforms import (
    BAD_VALUES_COLUMN,
    ORDER_COLUMN,
    PROBLEM_COLUMN,
    RAW_COLUMN,
    SERVER_DATE_COLUMN,
    SOURCE_COLUMN,
    SOURCE_FILE,
    parse_timestamp,
    split_loadable,
    to_target,
)
from ometria_spark.writer import SourceCounts, ensure_table, merge_into

log = logging.getLogger(__name__)

CURSOR_FORMAT = "yyyy-MM-dd'T'HH:mm:ss"
# Bumped when the same records would give other rows (the mapping or its rules changed):
# pulls merged under another version are never skipped as "merged before".
MAPPING_VERSION = 2


def merge_pull(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    landing: Landing,
    plan: Plan,
    *,
    skip_unchanged: bool = True,
    move_cursors: bool = True,
    on_phase: PhaseHook = no_hook,
) -> MergeCounts:
    """Read a pull's landed pages, quarantine what cannot load, MERGE the rest, then move
    the cursor and mark the pull merged, in that order.

    With ``skip_unchanged``, a pull whose every record the last merged pull already held
    (by digest), into the same table at the version that merge left, with the same cursors
    and the same mapping, changes nothing, and is marked merged without reading it.
    """
    spec = TABLES[plan.stream]
    ref = state.ref(spec.name)
    paths = landing.page_paths(plan)
    counts = MergeCounts(pages=len(paths))
    new_cursors: dict[str, str] = {}
    target = _target(config, ref)
    digests = landing.digests(plan) if skip_unchanged else None
    skipped = digests is not None and _merged_before(
        spark, landing, state, plan, ref, target, digests
    )
    if skipped and digests is not None:
        log.info("%s: all %d records were merged before", spec.name, len(digests))
        counts.records_read = len(digests)
        paths = []
    if plan.rejects:
        counts.quarantined += _quarantine_rejects(spark, state, landing, plan)
    if paths:
        new_cursors = _merge_pages(spark, config, state, plan, ref, paths, counts, on_phase)
    elif not skipped:  # a pull of no page (no list to read changes of): the table exists
        ensure_table(spark, spec, ref)
    on_phase(phase_name("merged:{stream}", stream=plan.stream))
    # The MERGE has committed: only now may the cursor move past this data.
    if new_cursors and move_cursors:
        old = state.cursors(plan.stream)
        forward = {k: v for k, v in new_cursors.items() if k not in old or v > old[k]}
        state.set_cursors(plan.stream, forward, plan.run_id)
    if not skipped:
        state.versions[ref.location] = table_version(spark, ref)
    target["table"] = version_in_run(spark, state, ref)
    landing.note_merged(plan, state.cursors(plan.stream), target)
    on_phase(phase_name("last-merged:{stream}", stream=plan.stream))
    landing.mark_merged(plan)
    return counts


def _merge_pages(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    plan: Plan,
    ref: TableRef,
    paths: list[str],
    counts: MergeCounts,
    on_phase: PhaseHook,
) -> dict[str, str]:
    """Quarantine and MERGE the rows of the pull's pages; fill ``counts``. The cursors the
    merged rows give (none when nothing merged)."""
    # One pass over the files, kept for the passes below: rows in the table's shape, plus
    # what the quarantine and the cursors read (an unreadable page is a row with a
    # _problem too). A local checkpoint rather than .cache(): cheaper to fill (rows, not
    # compressed columns), and a plain RDD to the MERGE (as in ometria_spark.exports).
    spec = TABLES[plan.stream]
    keep = (SOURCE_FILE, SOURCE_COLUMN, PROBLEM_COLUMN, RAW_COLUMN, SERVER_DATE_COLUMN,
            *api_stream(plan.stream).cursor_fields)  # fmt: skip
    target = to_target(spec, source_id=config.source_id, account_id=config.account_id,
                       synced_at=datetime.now(UTC), keep=keep)  # fmt: skip
    rows = read_records(spark, paths, spec).transform(target).localCheckpoint(eager=False)
    try:
        good_key = F.when(F.col(PROBLEM_COLUMN).isNull(), F.col(KEY_COLUMN))
        totals = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(ORDER_COLUMN).alias("read"),  # NULL for an unreadable page's row
            F.count(PROBLEM_COLUMN).alias("bad"),
            F.count_distinct(good_key).alias("keys"),  # (merge_into: does a key repeat?)
        ).first()
        assert totals is not None
        counts.records_read = int(totals["read"])
        good, bad = split_loadable(rows)
        if totals["bad"]:
            rejected = bad.select(SOURCE_FILE, SOURCE_COLUMN, PROBLEM_COLUMN, RAW_COLUMN)
            counts.quarantined += state.quarantine(rejected, stream=plan.stream, run_id=plan.run_id)
        loadable = SourceCounts(int(totals["rows"]) - int(totals["bad"]), int(totals["keys"]))
        if not loadable.rows:
            # Nothing to merge (the hourly case): skip the MERGE, but the table exists.
            ensure_table(spark, spec, ref)
            return {}
        on_phase(phase_name("merging:{stream}", stream=plan.stream))
        metrics = merge_into(spark, good, spec, ref, counts=loadable)
        counts.inserted, counts.updated = metrics.inserted, metrics.updated
        counts.collapsed = metrics.collapsed
        summary = observed(plan.stream, rows)
        counts.bad_values = summary.bad_values
        counts.warnings += summary.warnings
        return summary.cursors
    finally:
        release(rows)


def _target(config: Config, ref: TableRef) -> dict[str, Any]:
    """What a pull's rows are made with and written into, besides its records: the last
    merge notes it, and a pull is skipped as merged before only when it is the same."""
    return {
        "location": ref.location,
        "source_id": config.source_id,
        "account_id": config.account_id,
        "mapping": MAPPING_VERSION,
    }


def _merged_before(
    spark: SparkSession,
    landing: Landing,
    state: StateStore,
    plan: Plan,
    ref: TableRef,
    target: dict[str, Any],
    digests: set[str],
) -> bool:
    """True when merging the pull would change nothing: every record is one the stream's
    last merge held, that merge wrote into this very table (its version is still the one it
    left: nothing dropped, re-created or changed it since) with the same settings, and the
    committed cursors are the ones it left (a user who moved them back gets the MERGE)."""
    last = landing.last_merged_digests(plan.stream)
    if last is None or not digests <= last:
        return False
    if landing.last_merged_cursors(plan.stream) != state.cursors(plan.stream):
        return False
    noted = landing.last_merged_target(plan.stream)
    if noted is None or {k: v for k, v in noted.items() if k != "table"} != target:
        return False
    return noted.get("table") is not None and noted["table"] == version_in_run(spark, state, ref)


def version_in_run(
    spark: SparkSession, state: StateStore, ref: TableRef
) -> dict[str, object] | None:
    """A table's version, read once per run (only this run writes it: it holds the lock);
    ``merge_pull`` notes the new one after each merge."""
    if ref.location not in state.versions:
        state.versions[ref.location] = table_version(spark, ref)
    return state.versions[ref.location]


def _quarantine_rejects(
    spark: SparkSession, state: StateStore, landing: Landing, plan: Plan
) -> int:
    """Quarantine the bad elements the pull's planning met (under the stream that owns
    their endpoint, and with the same identity, so that each is quarantined once)."""
    plan_file = landing.storage.spark_path(f"{landing.folder(plan.stream, plan.run_id)}/_plan.json")
    total = 0
    for stream in sorted({str(r["stream"]) for r in plan.rejects}):
        rows = [
            (plan_file, r["request"], r["reason"], r["raw"])
            for r in plan.rejects
            if r["stream"] == stream
        ]
        frame = local_frame(
            spark, rows, string_schema(SOURCE_FILE, SOURCE_COLUMN, PROBLEM_COLUMN, RAW_COLUMN)
        )
        total += state.quarantine(frame, stream=stream, run_id=plan.run_id)
    return total


# Records stamped later than this past the server's clock are reported (a clock slip of
# the source, or a placeholder date such as 2099).
FUTURE_SLACK_SECONDS = 300


@dataclass
class Observed:
    cursors: dict[str, str]
    bad_values: int
    warnings: list[str] = field(default_factory=list)


def observed(stream: str, rows: DataFrame) -> Observed:
    """What the records read tell (``rows``: the loadable ones and those quarantined): the
    next cursors, and how many values of the loadable ones did not parse. One pass.

    A cursor is the newest source timestamp merged (the server's clock, not ours), but
    never later than one second before the server's clock (its ``Date``) when the first
    page of its scope was fetched: a record on an early page that changes while later
    pages are fetched is older than the newest record of those, and a pull can take
    longer than the lookback; a record stamped in the future (2099) would stop every
    later pull. This is the practice of the Singer SDK's replication-key signpost (the
    state never passes the moment the sync began). Records stamped after their page's
    server time are reported.
    """
    good = F.col(PROBLEM_COLUMN).isNull()
    bad_values = F.sum(F.when(good, F.size(BAD_VALUES_COLUMN))).alias("bad")
    fields_ = api_stream(stream).cursor_fields
    if not fields_:
        total = rows.agg(bad_values).first()
        return Observed({}, int(total["bad"] or 0) if total is not None else 0)
    stamp = F.when(good, parse_timestamp(F.col(fields_[-1])))
    server = parse_timestamp(F.col(SERVER_DATE_COLUMN))
    late = stamp > server + F.expr(f"INTERVAL {FUTURE_SLACK_SECONDS} SECONDS")
    scope_field = api_stream(stream).scope_field
    scope = F.col(scope_field) if scope_field else F.lit("")
    found = (
        rows.groupBy(F.coalesce(scope, F.lit("")).alias("scope"))
        .agg(
            # (least() passes NULLs by: a scope with no merged stamp keeps its cursor.)
            F.date_format(
                F.when(
                    F.max(stamp).isNotNull(),
                    F.least(F.max(stamp), F.min(server) - F.expr("INTERVAL 1 SECOND")),
                ),
                CURSOR_FORMAT,
            ).alias("cursor"),
            F.count_if(late).alias("late"),
            F.date_format(F.max(F.when(late, stamp)), CURSOR_FORMAT).alias("latest"),
            bad_values,
        )
        .collect()
    )
    cursors = {r["scope"]: r["cursor"] for r in found if r["cursor"]}
    late_count = sum(int(r["late"]) for r in found)
    warnings = []
    if late_count:
        latest = max(r["latest"] for r in found if r["latest"])
        warnings.append(
            f"{late_count} record(s) stamped after the server's clock (latest {latest}): "
            "loaded, but the cursor stops at the server's time"
        )
    return Observed(cursors, sum(int(r["bad"] or 0) for r in found), warnings)
