"""One sync run: for each stream, extract -> land -> read -> transform -> MERGE -> cursor.

Order inside a stream is what makes a crash harmless: pages are landed before they are
merged, the cursor moves only after the MERGE has committed, and a pull is marked merged
only after its cursor is saved. A run first finishes any pull an earlier run left unmerged.
A failed stream is recorded and reported; the other streams still run.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.client import OmetriaClient, Throttle, api_key_from_env
from ometria_spark.config import Config
from ometria_spark.extract import API_STREAMS, land, make_plan
from ometria_spark.landing import Landing, Plan, storage_for
from ometria_spark.readers import RAW_COLUMN, SOURCE_FILE, bad_pages, page_records, read_pages
from ometria_spark.spark import on_databricks, s3a_options
from ometria_spark.state import RunRecord, StateStore, SyncLockedError, table_ref
from ometria_spark.tables import TABLES
from ometria_spark.transforms import (
    BAD_VALUES_COLUMN,
    PROBLEM_COLUMN,
    parse_timestamp,
    split_loadable,
    to_target,
    with_problems,
)
from ometria_spark.writer import ensure_table, merge_into

log = logging.getLogger(__name__)

STREAM_ORDER: tuple[str, ...] = (
    "lists",
    "profiles",
    "member_lists",
    "unsubscribes",
    "email_events",
)
CURSOR_FORMAT = "yyyy-MM-dd'T'HH:mm:ss"


@dataclass
class RunReport:
    run_id: str
    streams: list[RunRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "succeeded" for r in self.streams)


@dataclass
class MergeCounts:
    pages: int = 0
    records_read: int = 0
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    bad_values: int = 0

    def add(self, other: MergeCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def crash_point(name: str) -> None:
    """Test hook: ``OMETRIA_SPARK_CRASH_AT=name`` kills this process here with SIGKILL, the
    way a lost driver or an OOM kill would, so crash tests can stop at exact phases."""
    if os.environ.get("OMETRIA_SPARK_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def new_run_id(now: datetime) -> str:
    """Sortable by start time, unique across concurrent starts."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def resolve_api_key(config: Config, spark: SparkSession) -> str:
    """The API key from a Databricks secret (on Databricks, if configured) or the env var."""
    if config.api.key_secret_scope and config.api.key_secret_key and on_databricks():
        from pyspark.dbutils import DBUtils

        return str(
            DBUtils(spark).secrets.get(config.api.key_secret_scope, config.api.key_secret_key)
        )
    return api_key_from_env(config.api.key_env)


def run(
    spark: SparkSession,
    config: Config,
    *,
    streams: tuple[str, ...] | None = None,
    full_refresh: bool = False,
    now: datetime | None = None,
    on_page: Callable[[str, int, int], None] | None = None,
) -> RunReport:
    """Sync the configured (or given) streams; never raises for a failed stream.

    One sync of the same tables at a time: a run that finds the lock held by a live run
    does nothing and reports every stream ``refused``.
    """
    started = now or datetime.now(UTC)
    report = RunReport(new_run_id(started))
    selected = [s for s in STREAM_ORDER if s in (streams or config.sync.streams)]
    for key, value in s3a_options(config.exports.s3_endpoint, config.exports.s3_region).items():
        spark.conf.set(key, value)
    state = StateStore(spark, config)
    try:
        state.acquire_lock(report.run_id, config.sync.lock_timeout_minutes)
    except SyncLockedError as exc:
        log.error("%s", exc)
        for stream in selected:
            now_utc = datetime.now(UTC)
            report.streams.append(
                RunRecord(report.run_id, stream, now_utc, now_utc, "refused", error=str(exc))
            )
        return report
    try:
        _run_streams(spark, config, state, report, selected, full_refresh, started, on_page)
    finally:
        state.release_lock(report.run_id)
    return report


def _run_streams(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    report: RunReport,
    selected: list[str],
    full_refresh: bool,
    started: datetime,
    on_page: Callable[[str, int, int], None] | None,
) -> None:
    landing = Landing(
        config.storage.raw_path,
        storage_for(config.storage.raw_path, config.exports.s3_endpoint, config.exports.s3_region),
    )
    client: OmetriaClient | None = None
    setup_error: Exception | None = None
    api_key = ""
    if any(s in API_STREAMS for s in selected):
        try:
            api_key = resolve_api_key(config, spark)
            client = OmetriaClient(
                config.api.base_url,
                api_key,
                page_size=config.api.page_size,
                timeout=config.api.timeout_seconds,
                max_attempts=config.api.max_attempts,
                throttle=Throttle(config.api.requests_per_second),
            )
        except Exception as exc:  # reported by each API stream below
            setup_error = exc
    for stream in selected:
        record = RunRecord(run_id=report.run_id, stream=stream, started_at=datetime.now(UTC))
        try:
            if stream == "email_events":
                _sync_email_events(spark, config, state, record, full_refresh, started)
            else:
                if client is None:
                    raise setup_error or RuntimeError("no API client")
                _sync_api_stream(
                    spark,
                    config,
                    state,
                    landing,
                    client,
                    stream,
                    record,
                    full_refresh,
                    started,
                    on_page,
                )
            record.status = "succeeded"
        except Exception as exc:
            record.status = "failed"
            record.error = _one_line(exc, api_key)
            log.error("%s failed: %s", stream, record.error)
            log.debug("%s failure detail", stream, exc_info=True)
        finally:
            crash_point(f"after:{stream}")
            record.ended_at = datetime.now(UTC)
            report.streams.append(record)
            try:
                state.record_run(record)
            except Exception as exc:  # the run record must not hide the stream's outcome
                log.error("could not record the run of %s: %s", stream, _one_line(exc, api_key))
    if client is not None:
        client.close()


def _one_line(exc: BaseException, secret: str) -> str:
    """A short, secret-free reason; for JVM errors, the Java exception's own message."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[0][:500]
    # A safety net: the client never puts the key in a message. (Too short a value would
    # mask ordinary words, and no real key is that short.)
    return line.replace(secret, "***") if len(secret) >= 8 else line


def _sync_api_stream(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    landing: Landing,
    client: OmetriaClient,
    stream: str,
    record: RunRecord,
    full_refresh: bool,
    now: datetime,
    on_page: Callable[[str, int, int], None] | None,
) -> None:
    counts = MergeCounts()
    # 1. Finish what an earlier run landed (or half landed) but never merged.
    for plan in landing.unmerged_plans(stream):
        log.info("%s: resuming unmerged pull %s", stream, plan.run_id)
        land(plan, client, landing, on_page=on_page)
        counts.add(merge_pull(spark, config, state, landing, plan))
    # 2. This run's pull, from the committed cursors.
    if full_refresh:
        state.reset(stream)
    cursors = state.cursors(stream)
    record.cursor_before = _describe(cursors)
    plan = make_plan(
        stream,
        run_id=record.run_id,
        client=client,
        page_size=config.api.page_size,
        cursors=cursors,
        lookback_minutes=config.sync.lookback_minutes,
        start_date=config.sync.start_date,
        window_days=config.sync.unsubscribes_window_days,
        now=now,
    )
    landing.save_plan(plan)
    land(plan, client, landing, on_page=on_page)
    crash_point(f"landed:{stream}")
    counts.add(merge_pull(spark, config, state, landing, plan))
    record.cursor_after = _describe(state.cursors(stream))
    record.pages = counts.pages
    record.records_read = counts.records_read
    record.rows_inserted = counts.inserted
    record.rows_updated = counts.updated
    record.quarantined = counts.quarantined
    record.bad_values = counts.bad_values


def _describe(cursors: dict[str, str]) -> str | None:
    if not cursors:
        return None
    if list(cursors) == [""]:
        return cursors[""]
    return f"{len(cursors)} scopes, latest {max(cursors.values())}"


def merge_pull(
    spark: SparkSession, config: Config, state: StateStore, landing: Landing, plan: Plan
) -> MergeCounts:
    """Read a pull's landed pages, quarantine what cannot load, MERGE the rest, then move
    the cursor and mark the pull merged, in that order."""
    spec = TABLES[plan.stream]
    paths = landing.page_paths(plan)
    counts = MergeCounts(pages=len(paths))
    new_cursors: dict[str, str] = {}
    if paths:
        pages = read_pages(spark, paths).cache()
        records = page_records(pages, spec).transform(with_problems(spec)).cache()
        totals = records.agg(
            F.count(F.lit(1)).alias("read"),
            F.count(PROBLEM_COLUMN).alias("bad"),
        ).first()
        bad_page_count = bad_pages(pages).count()
        assert totals is not None
        counts.records_read = int(totals["read"])
        good, bad = split_loadable(records)
        if totals["bad"] or bad_page_count:
            rejected = bad_pages(pages).unionByName(
                bad.select(SOURCE_FILE, PROBLEM_COLUMN, RAW_COLUMN)
            )
            counts.quarantined = state.quarantine(rejected, stream=plan.stream, run_id=plan.run_id)
        if counts.records_read > int(totals["bad"]):
            prepared = good.transform(
                to_target(
                    spec,
                    source_id=config.source_id,
                    account_id=config.account_id,
                    synced_at=datetime.now(UTC),
                )
            )
            metrics = merge_into(spark, prepared, spec, table_ref(config, spec.name))
            counts.inserted, counts.updated = metrics.inserted, metrics.updated
            summary = observed(plan.stream, good, prepared)
            counts.bad_values = summary.bad_values
            new_cursors.update(summary.cursors)
        else:  # nothing to merge (the hourly case): skip the MERGE, but the table exists
            ensure_table(spark, spec, table_ref(config, spec.name))
        records.unpersist()
        pages.unpersist()
    crash_point(f"merged:{plan.stream}")
    # The MERGE has committed: only now may the cursor move past this data.
    if new_cursors:
        old = state.cursors(plan.stream)
        forward = {k: v for k, v in new_cursors.items() if k not in old or v > old[k]}
        state.set_cursors(plan.stream, forward, plan.run_id)
    landing.mark_merged(plan)
    return counts


@dataclass
class Observed:
    cursors: dict[str, str]
    bad_values: int


def observed(stream: str, good: DataFrame, prepared: DataFrame) -> Observed:
    """What the merged records tell: the newest source timestamps (the server's clock, not
    ours) as the next cursors, and how many values did not parse."""
    bad_values = prepared.agg(F.sum(F.size(BAD_VALUES_COLUMN))).first()
    bad = int(bad_values[0] or 0) if bad_values is not None else 0

    def latest(column: str) -> Column:
        return F.date_format(F.max(parse_timestamp(F.col(column))), CURSOR_FORMAT)

    if stream in ("profiles", "unsubscribes"):
        column = "update_since" if stream == "profiles" else "timestamp"
        row = good.agg(latest(column).alias("c")).first()
        return Observed({"": row["c"]} if row is not None and row["c"] else {}, bad)
    if stream == "member_lists":
        rows = good.groupBy("id").agg(latest("timestamp").alias("c")).collect()
        return Observed({r["id"]: r["c"] for r in rows if r["c"]}, bad)
    return Observed({}, bad)


def _sync_email_events(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    record: RunRecord,
    full_refresh: bool,
    now: datetime,
) -> None:
    from ometria_spark.exports import load_email_events

    assert config.exports.email_events_path is not None  # checked by config validation
    result = load_email_events(
        spark,
        root=config.exports.email_events_path,
        fmt=config.exports.format,
        full_refresh=full_refresh,
        table=table_ref(config, "email_events"),
        loaded_files=table_ref(config, "_loaded_files"),
        state=state,
        source_id=config.source_id,
        account_id=config.account_id,
        run_id=record.run_id,
        synced_at=datetime.now(UTC),
    )
    record.files = result.files_loaded
    record.records_read = result.rows_read
    record.rows_inserted = result.inserted
    record.rows_updated = result.updated
    record.quarantined = result.quarantined
    record.bad_values = result.bad_values
    if result.files_rejected:
        names = ", ".join(os.path.basename(p) for p, _ in result.files_rejected[:3])
        raise RuntimeError(
            f"{len(result.files_rejected)} export file(s) rejected ({names}); "
            f"first reason: {result.files_rejected[0][1]}"
        )
