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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from ometria_spark.client import OmetriaClient, PagingFacts, Throttle, api_key_from_env
from ometria_spark.config import Config
from ometria_spark.errors import one_line
from ometria_spark.extract import ProgressCallback, land, make_plan
from ometria_spark.landing import Landing, Plan, landing_for
from ometria_spark.load import merge_pull, version_in_run
from ometria_spark.lock import RunLock, SyncLockedError
from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.spark import on_databricks, run_settings, s3a_conf
from ometria_spark.state import LOADED_FILES_TABLE, MergeCounts, RunRecord, StateStore
from ometria_spark.streams import ApiStream, registry

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    run_id: str
    streams: list[RunRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "succeeded" for r in self.streams)


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
    on_page: ProgressCallback | None = None,
    register_names: bool = True,
    on_phase: PhaseHook = no_hook,
) -> RunReport:
    """Sync the configured (or given) streams; never raises for a failed stream.

    One sync of the same landing zone (and tables) at a time: a run that finds the lock
    held by a live run does nothing and reports every stream ``refused``. With
    ``register_names`` (and ``storage.tables_path``), path tables are also registered by
    name in the session's catalog. ``on_phase`` is told each phase the run reaches
    (``ometria_spark.phases``).
    """
    started = now or datetime.now(UTC)
    report = RunReport(new_run_id(started))
    selected = [s.name for s in registry() if s.name in (streams or config.sync.streams)]
    for key, value in s3a_conf(config).items():
        spark.conf.set(key, value)
    landing = landing_for(config)
    lock = RunLock(landing.root, landing.storage)
    try:
        lock.acquire(report.run_id, config.sync.lock_lease_seconds)
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
            state = StateStore(spark, config, register_names=register_names, on_phase=on_phase,
                               guard=lock.check)  # fmt: skip
            one_run = _Run(spark, config, state, landing, report, full_refresh=full_refresh,
                           started=started, on_page=on_page, on_phase=on_phase)  # fmt: skip
            one_run.streams(selected)
    finally:
        lock.release(report.run_id)
    return report


class _Run:
    """One run's streams. Extraction runs ahead of loading: one driver thread lands the
    API streams' pages, in stream order, while this thread merges each stream as soon as
    its pages are landed."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        state: StateStore,
        landing: Landing,
        report: RunReport,
        *,
        full_refresh: bool,
        started: datetime,
        on_page: ProgressCallback | None,
        on_phase: PhaseHook,
    ) -> None:
        self.spark, self.config, self.state, self.landing = spark, config, state, landing
        self.report, self.full_refresh, self.started = report, full_refresh, started
        self.on_page, self.on_phase = on_page, on_phase
        self.client: OmetriaClient | None = None
        self.setup_error: Exception | None = None
        self.api_key = ""
        self.records: dict[str, RunRecord] = {}
        self.counts: dict[str, MergeCounts] = {}
        self.failed_early: dict[str, Exception] = {}
        self.pulls: dict[str, Future[Plan]] = {}

    def streams(self, selected: list[str]) -> None:
        """Sync the selected streams and record the run (one append for the whole run)."""
        run_id = self.report.run_id
        api = [s.name for s in registry() if isinstance(s, ApiStream) and s.name in selected]
        if api:
            self._open_client()
        for s in selected:
            self.records[s] = RunRecord(run_id=run_id, stream=s, started_at=self.started)
            self.counts[s] = MergeCounts()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ometria-extract") as pool:
            # 0. The usual case (nothing left unmerged, every stream merged before): start
            #    the pulls at once from the cursors the last merges left beside their pages,
            #    while this thread reads the committed cursors from Delta (seconds on a
            #    cold JVM).
            early = self.landing.early_cursors(api) if self.client and not self.full_refresh else {}
            for stream, stream_cursors in early.items():
                self.pulls[stream] = self._pull(pool, stream, stream_cursors, run_id)
            # 1. Per API stream: finish what an earlier run landed (or half landed) but
            #    never merged, then read the committed cursors. Done for all before any
            #    other pull, so that the client is only ever used by one thread at a time.
            cursors: dict[str, dict[str, str]] = {}
            for stream in api:
                try:
                    cursors[stream] = self._prepare(stream, resume=stream not in early)
                except Exception as exc:
                    self.failed_early[stream] = exc
            self._start_pulls(pool, early, cursors)
            # 3. Load each stream as its pages arrive.
            for stream in selected:
                self._load(stream, api)
        if self.client is not None:
            self.client.close()
        self.landing.prune(api, self.started, self.config.storage.raw_retention_days)
        try:
            self.state.record_runs(self.report.streams)
        except Exception as exc:  # the run records must not hide the streams' outcome
            log.error("could not record the run: %s", one_line(exc, self.api_key))

    def _open_client(self) -> None:
        config = self.config
        try:
            self.api_key = resolve_api_key(config, self.spark)
            self.client = OmetriaClient(
                config.api.base_url,
                self.api_key,
                page_size=config.api.page_size,
                timeout=config.api.timeout_seconds,
                max_attempts=config.api.max_attempts,
                max_retry_wait=config.api.max_retry_wait_seconds,
                throttle=Throttle(config.api.requests_per_second),
                paging=PagingFacts(
                    self.landing.paging_facts(), on_change=self.landing.save_paging_facts
                ),
            )
        except Exception as exc:  # reported by each API stream
            self.setup_error = exc

    def _pull(
        self, pool: ThreadPoolExecutor, stream: str, cursors: dict[str, str], run_id: str
    ) -> Future[Plan]:
        assert self.client is not None
        return pool.submit(
            _extract, self.config, self.landing, self.client, stream, run_id, cursors,
            self.started, self.on_page, self.on_phase,
        )  # fmt: skip

    def _prepare(self, stream: str, *, resume: bool) -> dict[str, str]:
        """Finish the stream's unmerged pulls (``resume``), then its committed cursors."""
        if self.client is None:
            raise self.setup_error or RuntimeError("no API client")
        _reload_if_table_gone(self.spark, self.state, stream)
        if resume:
            for plan in self.landing.unmerged_plans(stream):
                self._finish_unmerged(stream, plan)
        if self.full_refresh:
            self.state.reset(stream)
        cursors = self.state.cursors(stream)
        self.records[stream].cursor_before = _describe(cursors)
        return cursors

    def _finish_unmerged(self, stream: str, plan: Plan) -> None:
        assert self.client is not None
        # A pull planned from later cursors than the committed ones (moved back by hand
        # since) would advance them past a gap: set it aside.
        if plan.cursors is not None and not _starts_in_time(
            plan.cursors, self.state.cursors(stream)
        ):
            log.warning("%s: pull %s set aside: cursors moved back since it was planned",
                        stream, plan.run_id)  # fmt: skip
            self.landing.abandon(stream, plan.run_id)
            return
        log.info("%s: resuming unmerged pull %s", stream, plan.run_id)
        spans_runs = self.landing.spans_runs(plan)
        land(plan, self.client, self.landing, on_page=self.on_page, on_phase=self.on_phase)
        merged = merge_pull(
            self.spark, self.config, self.state, self.landing, plan,
            move_cursors=not spans_runs, on_phase=self.on_phase,
        )  # fmt: skip
        self.counts[stream].add(merged)

    def _start_pulls(
        self,
        pool: ThreadPoolExecutor,
        early: dict[str, dict[str, str]],
        cursors: dict[str, dict[str, str]],
    ) -> None:
        """2. This run's pulls, from the committed cursors, in the extraction thread. An
        early pull stands only if it started no later than Delta's cursors say (someone
        may have moved them back); otherwise it is set aside, never merged, and pulled
        again."""
        run_id = self.report.run_id
        for stream, stream_cursors in cursors.items():
            if stream in early and not _starts_in_time(early[stream], stream_cursors):
                log.warning("%s: cursors changed since the last merge; pulling again", stream)
                try:
                    self.pulls[stream].result()
                except Exception as exc:  # it failed part way: set aside all the same
                    log.info("%s: the early pull had failed: %s", stream,
                             one_line(exc, self.api_key))  # fmt: skip
                self.landing.abandon(stream, run_id)
                self.pulls[stream] = self._pull(pool, stream, stream_cursors, f"{run_id}-again")
            if stream not in self.pulls:
                self.pulls[stream] = self._pull(pool, stream, stream_cursors, run_id)

    def _load(self, stream: str, api: list[str]) -> None:
        record = self.records[stream]
        try:
            if stream in self.failed_early:
                raise self.failed_early[stream]
            if stream not in api:  # files: the export
                _sync_email_events(
                    self.spark, self.config, self.state, record, self.full_refresh, self.on_phase
                )
            else:
                plan = self.pulls[stream].result()
                merged = merge_pull(
                    self.spark, self.config, self.state, self.landing, plan,
                    skip_unchanged=not self.full_refresh, on_phase=self.on_phase,
                )  # fmt: skip
                self.counts[stream].add(merged)
                record.cursor_after = _describe(self.state.cursors(stream))
                record.take(self.counts[stream])
            record.status = "succeeded"
        except Exception as exc:
            record.take(self.counts[stream])
            record.status = "failed"
            record.error = one_line(exc, self.api_key)
            log.error("%s failed: %s", stream, record.error)
            log.debug("%s failure detail", stream, exc_info=True)
        finally:
            self.on_phase(phase_name("after:{stream}", stream=stream))
            record.ended_at = datetime.now(UTC)
            self.report.streams.append(record)


def _reload_if_table_gone(spark: SparkSession, state: StateStore, stream: str) -> None:
    """A stream whose table is gone (dropped by hand, or a new ``storage.tables_path`` with
    the old cursors) while ``_sync_state`` holds its cursors would only get what changed
    since: its cursors are forgotten, so that the table is loaded again whole."""
    if state.cursors(stream) and version_in_run(spark, state, state.ref(stream)) is None:
        log.warning("%s: its table is missing while _sync_state has its cursors; loading "
                    "it again from the start", stream)  # fmt: skip
        state.reset(stream)


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
    on_page: ProgressCallback | None,
    on_phase: PhaseHook,
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
    land(plan, client, landing, on_page=on_page, on_phase=on_phase)
    on_phase(phase_name("landed:{stream}", stream=stream))
    return plan


def _describe(cursors: dict[str, str]) -> str | None:
    if not cursors:
        return None
    if list(cursors) == [""]:
        return cursors[""]
    return f"{len(cursors)} scopes, latest {max(cursors.values())}"


def _sync_email_events(
    spark: SparkSession,
    config: Config,
    state: StateStore,
    record: RunRecord,
    full_refresh: bool,
    on_phase: PhaseHook,
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
        on_phase=on_phase,
    )
    record.files = result.files_loaded
    record.take(
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
