"""One sync run: for each stream, extract -> land -> read -> transform -> MERGE -> cursor.

Order inside a stream is what makes a crash harmless: pages are landed before they are
merged, the cursor moves only after the MERGE has committed, and a pull is marked merged
only after its cursor is saved. A run first finishes any pull an earlier run left unmerged.
A failed stream is recorded and reported; the other streams still run.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.client import OmetriaClient, PagingFacts, Throttle, api_key_from_env
from ometria_spark.config import Config
from ometria_spark.crash import crash_later, crash_point
from ometria_spark.extract import land, make_plan
from ometria_spark.landing import Landing, Plan, storage_for
from ometria_spark.lock import RunLock, SyncLockedError
from ometria_spark.readers import read_records
from ometria_spark.spark import on_databricks, release, s3a_conf
from ometria_spark.state import LOADED_FILES_TABLE, RunRecord, StateStore
from ometria_spark.streams import ApiStream, api_stream, registry
from ometria_spark.tables import TABLES
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
from ometria_spark.writer import TableRef, ensure_table, merge_into, table_version

log = logging.getLogger(__name__)

CURSOR_FORMAT = "yyyy-MM-dd'T'HH:mm:ss"
# Bumped when the same records would give other rows (the mapping or its rules changed):
# pulls merged under another version are never skipped as "merged before".
MAPPING_VERSION = 2
# Session settings a run needs whatever the caller's session says (restored afterwards):
# timestamps without an offset are UTC, cursors are rendered in UTC; a record with a part
# of the wrong shape keeps its other fields (see readers.with_shape_checks).
RUN_SETTINGS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.json.enablePartialResults": "true",
}


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
    collapsed: int = 0
    warnings: list[str] = field(default_factory=list)

    def add(self, other: MergeCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _take_counts(record: RunRecord, counts: MergeCounts) -> None:
    record.pages = counts.pages
    record.records_read = counts.records_read
    record.rows_inserted = counts.inserted
    record.rows_updated = counts.updated
    record.quarantined = counts.quarantined
    record.bad_values = counts.bad_values
    record.collapsed = counts.collapsed
    record.warnings = "; ".join(counts.warnings) or None
    for warning in counts.warnings:
        log.warning("%s: %s", record.stream, warning)


@contextmanager
def run_settings(spark: SparkSession) -> Iterator[None]:
    """The session as a run needs it (``RUN_SETTINGS``), put back as it was afterwards: a
    notebook's session in Asia/Kolkata gives the same tables and cursors as one in UTC."""
    previous: dict[str, str | None] = {}
    value: str | None
    for key, value in RUN_SETTINGS.items():
        try:
            previous[key] = spark.conf.get(key)
            spark.conf.set(key, value)
        except Exception as exc:  # a platform that does not allow this one (serverless)
            log.debug("cannot set %s: %s", key, exc)
    try:
        yield
    finally:
        for key, value in previous.items():
            try:
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
            except Exception as exc:
                log.debug("cannot restore %s: %s", key, exc)


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
    register_names: bool = True,
) -> RunReport:
    """Sync the configured (or given) streams; never raises for a failed stream.

    One sync of the same landing zone (and tables) at a time: a run that finds the lock
    held by a live run does nothing and reports every stream ``refused``. With
    ``register_names`` (and ``storage.tables_path``), path tables are also registered by
    name in the session's catalog.
    """
    started = now or datetime.now(UTC)
    report = RunReport(new_run_id(started))
    selected = [s.name for s in registry() if s.name in (streams or config.sync.streams)]
    for key, value in s3a_conf(config).items():
        spark.conf.set(key, value)
    landing = Landing(
        config.storage.raw_path,
        storage_for(config.storage.raw_path, config.storage.s3_endpoint, config.storage.s3_region),
    )
    lock = RunLock(landing.root, landing.storage)
    try:
        lock.acquire(report.run_id, config.sync.lock_timeout_minutes)
    except SyncLockedError as exc:
        log.error("%s", exc)
        for stream in selected:
            now_utc = datetime.now(UTC)
            report.streams.append(
                RunRecord(report.run_id, stream, now_utc, now_utc, "refused", error=str(exc))
            )
        return report
    try:
        with run_settings(spark):
            state = StateStore(spark, config, register_names=register_names)
            _run_streams(
                spark, config, state, landing, report, selected, full_refresh, started, on_page
            )
    finally:
        lock.release(report.run_id)
    return report


def _run_streams(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    landing: Landing,
    report: RunReport,
    selected: list[str],
    full_refresh: bool,
    started: datetime,
    on_page: Callable[[str, int, int], None] | None,
) -> None:
    """Extraction runs ahead of loading: one driver thread lands the API streams' pages, in
    stream order, while this thread merges each stream as soon as its pages are landed."""
    client: OmetriaClient | None = None
    setup_error: Exception | None = None
    api_key = ""
    api_streams = [s.name for s in registry() if isinstance(s, ApiStream) and s.name in selected]
    if api_streams:
        try:
            api_key = resolve_api_key(config, spark)
            client = OmetriaClient(
                config.api.base_url,
                api_key,
                page_size=config.api.page_size,
                timeout=config.api.timeout_seconds,
                max_attempts=config.api.max_attempts,
                max_retry_wait=config.api.max_retry_wait_seconds,
                throttle=Throttle(config.api.requests_per_second),
                paging=PagingFacts(landing.paging_facts(), on_change=landing.save_paging_facts),
            )
        except Exception as exc:  # reported by each API stream below
            setup_error = exc
    records = {s: RunRecord(run_id=report.run_id, stream=s, started_at=started) for s in selected}
    counts = {s: MergeCounts() for s in selected}
    failed_early: dict[str, Exception] = {}
    pulls: dict[str, Future[Plan]] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ometria-extract") as extractor:

        def pull(stream: str, stream_cursors: dict[str, str], run_id: str) -> Future[Plan]:
            assert client is not None
            return extractor.submit(
                _extract, config, landing, client, stream, run_id, stream_cursors, started,
                on_page,
            )  # fmt: skip

        # 0. The usual case (nothing left unmerged, every stream merged before): start the
        #    pulls at once from the cursors the last merges left beside their pages, while
        #    this thread reads the committed cursors from Delta (seconds on a cold JVM).
        early = _early_cursors(landing, api_streams) if client and not full_refresh else {}
        for stream, stream_cursors in early.items():
            pulls[stream] = pull(stream, stream_cursors, report.run_id)
        # 1. Per API stream: finish what an earlier run landed (or half landed) but never
        #    merged, then read the committed cursors. Done for all before any other pull,
        #    so that the client is only ever used by one thread at a time.
        cursors: dict[str, dict[str, str]] = {}
        for stream in api_streams:
            try:
                if client is None:
                    raise setup_error or RuntimeError("no API client")
                _reload_if_table_gone(spark, config, state, stream)
                if stream not in early:
                    for plan in landing.unmerged_plans(stream):
                        # A pull planned from later cursors than the committed ones (moved
                        # back by hand since) would advance them past a gap: set it aside.
                        if plan.cursors is not None and not _starts_in_time(
                            plan.cursors, state.cursors(stream)
                        ):
                            log.warning("%s: pull %s set aside: cursors moved back since it "
                                        "was planned", stream, plan.run_id)  # fmt: skip
                            landing.abandon(stream, plan.run_id)
                            continue
                        log.info("%s: resuming unmerged pull %s", stream, plan.run_id)
                        spans_runs = _spans_runs(landing, plan)
                        land(plan, client, landing, on_page=on_page)
                        counts[stream].add(
                            merge_pull(
                                spark, config, state, landing, plan, move_cursors=not spans_runs
                            )
                        )
                if full_refresh:
                    state.reset(stream)
                cursors[stream] = state.cursors(stream)
                records[stream].cursor_before = _describe(cursors[stream])
            except Exception as exc:
                failed_early[stream] = exc
        # 2. This run's pulls, from the committed cursors, in the extraction thread. An early
        #    pull stands only if it started no later than Delta's cursors say (someone may
        #    have moved them back); otherwise it is set aside, never merged, and pulled again.
        for stream, stream_cursors in cursors.items():
            if stream in early and not _starts_in_time(early[stream], stream_cursors):
                log.warning("%s: cursors changed since the last merge; pulling again", stream)
                try:
                    pulls[stream].result()
                except Exception as exc:  # it failed part way: set aside all the same
                    log.info("%s: the early pull had failed: %s", stream, _one_line(exc, api_key))
                landing.abandon(stream, report.run_id)
                pulls[stream] = pull(stream, stream_cursors, f"{report.run_id}-again")
            if stream not in pulls:
                pulls[stream] = pull(stream, stream_cursors, report.run_id)
        # 3. Load each stream as its pages arrive.
        for stream in selected:
            record = records[stream]
            try:
                if stream in failed_early:
                    raise failed_early[stream]
                if stream not in api_streams:  # files: the export
                    _sync_email_events(spark, config, state, record, full_refresh)
                else:
                    plan = pulls[stream].result()
                    merged = merge_pull(
                        spark, config, state, landing, plan, skip_unchanged=not full_refresh
                    )
                    counts[stream].add(merged)
                    record.cursor_after = _describe(state.cursors(stream))
                    _take_counts(record, counts[stream])
                record.status = "succeeded"
            except Exception as exc:
                if stream in counts:
                    _take_counts(record, counts[stream])
                record.status = "failed"
                record.error = _one_line(exc, api_key)
                log.error("%s failed: %s", stream, record.error)
                log.debug("%s failure detail", stream, exc_info=True)
            finally:
                crash_point(f"after:{stream}")
                record.ended_at = datetime.now(UTC)
                report.streams.append(record)
    if client is not None:
        client.close()
    try:  # one append for the whole run
        state.record_runs(report.streams)
    except Exception as exc:  # the run records must not hide the streams' outcome
        log.error("could not record the run: %s", _one_line(exc, api_key))


RESUMED_MARKER = "_resumed"


def _reload_if_table_gone(
    spark: SparkSession, config: Config, state: StateStore, stream: str
) -> None:
    """A stream whose table is gone (dropped by hand, or a new ``storage.tables_path`` with
    the old cursors) while ``_sync_state`` holds its cursors would only get what changed
    since: its cursors are forgotten, so that the table is loaded again whole."""
    if state.cursors(stream) and _version(spark, state, state.ref(stream)) is None:
        log.warning("%s: its table is missing while _sync_state has its cursors; loading "
                    "it again from the start", stream)  # fmt: skip
        state.reset(stream)


def _spans_runs(landing: Landing, plan: Plan) -> bool:
    """True when a request of the pull was half landed by a run that died, so that its pages
    were (or will be) fetched by more than one run, maybe a day apart: no one snapshot.
    Profiles are paged by id, not by time, so the newest record of the later pages is no
    bound for the earlier pages' profiles changed meanwhile: such a pull is merged without
    moving the cursor (this run's own pull then starts from the committed one). Noted in
    the pull's folder, for a run that dies again after landing the rest."""
    folder = landing.folder(plan.stream, plan.run_id)
    if RESUMED_MARKER in landing.storage.list_names(folder):
        return True
    done, pages = landing.progress(plan)
    if any(index not in done for index in pages):
        landing.storage.write_text(f"{folder}/{RESUMED_MARKER}", "")
        return True
    return False


def _early_cursors(landing: Landing, streams: list[str]) -> dict[str, dict[str, str]]:
    """The cursors every stream's last merge recorded, if all have them and no pull of any
    of them waits to be merged (that would need the client first); else nothing."""
    early = {}
    for stream in streams:
        recorded = landing.last_merged_cursors(stream)
        if recorded is None or landing.unmerged_plans(stream):
            return {}
        early[stream] = recorded
    return early


def _starts_in_time(used: dict[str, str], committed: dict[str, str]) -> bool:
    """True when a pull planned from ``used`` misses nothing the committed cursors cover:
    no scope starts later than its committed cursor (or has none committed)."""
    return all(scope in committed and value <= committed[scope] for scope, value in used.items())


def _extract(
    config: Config,
    landing: Landing,
    client: OmetriaClient,
    stream: str,
    run_id: str,
    cursors: dict[str, str],
    now: datetime,
    on_page: Callable[[str, int, int], None] | None,
) -> Plan:
    """Plan and land one stream's pull (the extraction thread: no Spark here)."""
    plan = make_plan(
        stream,
        run_id=run_id,
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
    return plan


def _one_line(exc: BaseException, secret: str) -> str:
    """A short, secret-free reason; for JVM errors, the Java exception's own message."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[0][:500]
    # A safety net: the client never puts the key in a message. (Too short a value would
    # mask ordinary words, and no real key is that short.)
    return line.replace(secret, "***") if len(secret) >= 8 else line


def _describe(cursors: dict[str, str]) -> str | None:
    if not cursors:
        return None
    if list(cursors) == [""]:
        return cursors[""]
    return f"{len(cursors)} scopes, latest {max(cursors.values())}"


def merge_pull(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    landing: Landing,
    plan: Plan,
    *,
    skip_unchanged: bool = True,
    move_cursors: bool = True,
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
        # One pass over the files, kept for the passes below: rows in the table's shape,
        # plus what the quarantine and the cursors read (an unreadable page is a row with
        # a _problem too). A local checkpoint rather than .cache(): cheaper to fill (rows,
        # not compressed columns), and a plain RDD to the MERGE (as in exports.py).
        keep = (SOURCE_FILE, SOURCE_COLUMN, PROBLEM_COLUMN, RAW_COLUMN, SERVER_DATE_COLUMN,
                *api_stream(plan.stream).cursor_fields)  # fmt: skip
        rows = (
            read_records(spark, paths, spec)
            .transform(
                to_target(
                    spec,
                    source_id=config.source_id,
                    account_id=config.account_id,
                    synced_at=datetime.now(UTC),
                    keep=keep,
                )
            )
            .localCheckpoint(eager=False)
        )
        totals = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(ORDER_COLUMN).alias("read"),  # NULL for an unreadable page's row
            F.count(PROBLEM_COLUMN).alias("bad"),
        ).first()
        assert totals is not None
        counts.records_read = int(totals["read"])
        good, bad = split_loadable(rows)
        if totals["bad"]:
            rejected = bad.select(SOURCE_FILE, SOURCE_COLUMN, PROBLEM_COLUMN, RAW_COLUMN)
            counts.quarantined += state.quarantine(rejected, stream=plan.stream, run_id=plan.run_id)
        if int(totals["rows"]) > int(totals["bad"]):
            crash_later(f"merging:{plan.stream}")
            metrics = merge_into(spark, good, spec, ref)
            counts.inserted, counts.updated = metrics.inserted, metrics.updated
            counts.collapsed = metrics.collapsed
            summary = observed(plan.stream, rows)
            counts.bad_values = summary.bad_values
            counts.warnings += summary.warnings
            new_cursors.update(summary.cursors)
        else:  # nothing to merge (the hourly case): skip the MERGE, but the table exists
            ensure_table(spark, spec, ref)
        release(rows)
    elif not skipped:  # a pull of no page (no list to read changes of): the table exists
        ensure_table(spark, spec, ref)
    crash_point(f"merged:{plan.stream}")
    # The MERGE has committed: only now may the cursor move past this data.
    if new_cursors and move_cursors:
        old = state.cursors(plan.stream)
        forward = {k: v for k, v in new_cursors.items() if k not in old or v > old[k]}
        state.set_cursors(plan.stream, forward, plan.run_id)
    if not skipped:
        state.versions[ref.location] = table_version(spark, ref)
    target["table"] = _version(spark, state, ref)
    landing.mark_merged(plan, state.cursors(plan.stream), target)
    return counts


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
    return noted.get("table") is not None and noted["table"] == _version(spark, state, ref)


def _version(spark: SparkSession, state: StateStore, ref: TableRef) -> dict[str, object] | None:
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
        frame = spark.createDataFrame(
            rows,
            f"{SOURCE_FILE} string, {SOURCE_COLUMN} string, {PROBLEM_COLUMN} string, "
            f"{RAW_COLUMN} string",
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


def _sync_email_events(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    record: RunRecord,
    full_refresh: bool,
) -> None:
    from ometria_spark.exports import load_email_events

    assert config.exports.email_events_path is not None  # checked by config validation
    result = load_email_events(
        spark,
        root=config.exports.email_events_path,
        fmt=config.exports.format,
        full_refresh=full_refresh,
        table=state.ref("email_events"),
        loaded_files=state.ref(LOADED_FILES_TABLE),
        state=state,
        source_id=config.source_id,
        account_id=config.account_id,
        run_id=record.run_id,
        synced_at=datetime.now(UTC),
    )
    record.files = result.files_loaded
    _take_counts(
        record,
        MergeCounts(
            records_read=result.rows_read,
            inserted=result.inserted,
            updated=result.updated,
            quarantined=result.quarantined,
            bad_values=result.bad_values,
            collapsed=result.collapsed,
        ),
    )
    if result.files_rejected:
        names = ", ".join(os.path.basename(p) for p, _ in result.files_rejected[:3])
        raise RuntimeError(
            f"{len(result.files_rejected)} export file(s) rejected ({names}); "
            f"first reason: {result.files_rejected[0][1]}"
        )
