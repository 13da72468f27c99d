"""A live, imperfect source and an ordinary user's config lose nothing (issue 13).

The emulator plays an Ometria account that keeps changing while it is paged through
(``LiveChanges``), caps pages below the limit, stamps records in the future, sends
non-objects in ``/lists``, unsubscribes without a profile, odd statuses, redirects; the
config is written as people write YAML (unquoted dates); the notebook's session is in
another time zone. Each case runs ``run()`` for real (HTTP on loopback, Delta tables) and
compares whole tables with the rows built in plain Python by ``tests/expected.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ometria_spark.config import Config, load_config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import EXPORT_COLUMNS, csv_bytes
from ometria_spark.emulator.server import EmulatorServer, LiveChanges
from ometria_spark.state import QUARANTINE_TABLE, RUNS_TABLE
from ometria_spark.sync import RunReport, run
from ometria_spark.tables import KEY_COLUMN, SYNCED_AT, TABLES
from tests import expected
from tests.frames import assert_frames_equal
from tests.reliability.rows import assert_rows, cursors
from tests.test_sync import ACCOUNT, KEY, SOURCE, assert_tables_match
from tests.test_sync import table as read_table

API = ("lists", "profiles", "member_lists", "unsubscribes")


def errors(report: RunReport) -> dict[str, str | None]:
    return {r.stream: r.error for r in report.streams if r.status != "succeeded"}


def by_stream(report: RunReport) -> dict[str, Any]:
    return {r.stream: r for r in report.streams}


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- an ordinary user's config, and the odd records an account really holds ---------------

USER_YAML = """\
account_id: {account}
source_id: {source}
api:
  base_url: {url}
  key_env: OMETRIA_TEST_KEY
  page_size: 40
  requests_per_second: 200
  max_retry_wait_seconds: 5
exports:
  email_events_path: {exports}
  format: csv
storage:
  raw_path: {raw}
  tables_path: {tables}
sync:
  start_date: 2025-06-01
  lookback_minutes: 30
"""

# Export files whose names hold glob characters: each must be read as exactly itself.
GLOB_NAMES = ["events[1].csv", "events{a,b}.csv", "star*.csv", "what?.csv", "back\\slash.csv"]


@pytest.fixture()
def account() -> Iterator[EmulatorServer]:
    ds = Dataset.generate(seed=31, profiles=300, lists=3)
    with ds.lock:
        # A profile of a slightly wrong shape (properties as an array, dates as text), and
        # one without update_since (its updated_at is the bound it was requested with).
        ds.profiles[3] = {**ds.profiles[3], "properties": [], "dates": "2026-01-01"}
        no_stamp = {k: v for k, v in ds.profiles[5].items() if k != "update_since"}
        ds.profiles[5] = no_stamp
        # A list enter and exit of one profile in the same second: the spec's key makes
        # them one row (the later one), counted as collapsed.
        list_id = ds.lists[0]["id"]
        first = ds.list_changes[list_id][0]
        ds.list_changes[list_id].insert(1, {**first, "event": "list_exit"})
        # Ometria sends some unsubscribes with an email address but no profile (the
        # generator makes one in eight so; one more, to be sure of it).
        template = {k: v for k, v in ds.unsubscribes[0].items() if k != "profile_id"}
        ds.unsubscribes.append({**template, "send_id": "s-no-profile"})
        ds.unsubscribes.sort(key=lambda u: u["timestamp"])
    with EmulatorServer(ds, api_key=KEY) as server:
        # Not list objects: quarantined once by lists; member_lists reads the other lists.
        server.odd_list_elements = ["a string", None, {"title": "no id"}]
        yield server


def expected_profiles(ds: Dataset, bound: str | None) -> list[tuple[Any, ...]]:
    """The profiles as the job maps them (the odd-shaped one without the parts it could not
    read); the one without update_since has the ``bound`` it was last requested with."""
    at = TABLES["profiles"].column_names.index("updated_at")
    undated = ds.profiles[5]["id"]
    return [
        (*row[:at], expected.when(bound), *row[at + 1 :]) if row[0] == undated else row
        for row in expected.profiles(ds, SOURCE, ACCOUNT)
    ]


def expected_member_lists(ds: Dataset) -> list[tuple[Any, ...]]:
    return expected.member_lists(ds, SOURCE, ACCOUNT)


def glob_events() -> list[dict[str, str]]:
    return [
        {"event_id": f"ev-glob-{i}", "uuid": f"u-{i}", "to_address": f"g{i}@example.com",
         "event_type": "open", "dt_occurred": f"2025-12-2{i} 10:00:00"}
        for i in range(len(GLOB_NAMES))
    ]  # fmt: skip


COLLIDING = [  # two campaigns emailing one address in one second: one row, the later
    {"event_id": "ev-c1", "uuid": "camp-1", "to_address": "same@example.com",
     "event_type": "send", "dt_occurred": "2025-12-30 09:00:00", "campaign_title": "A"},
    {"event_id": "ev-c2", "uuid": "camp-2", "to_address": "same@example.com",
     "event_type": "send", "dt_occurred": "2025-12-30 09:00:00", "campaign_title": "B"},
]  # fmt: skip


def write_exports(root: Path) -> list[dict[str, str]]:
    events = glob_events()
    for name, event in zip(GLOB_NAMES, events, strict=True):
        folder = root / "2025" / "12"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(csv_bytes(EXPORT_COLUMNS, [event]))
    (root / "2025" / "12" / "collide.csv.gz").write_bytes(
        gzip.compress(csv_bytes(EXPORT_COLUMNS, COLLIDING))
    )
    return [*events, COLLIDING[1]]


def last_profiles_bound(server: EmulatorServer) -> str | None:
    asked = [r.params for r in server.request_log if r.path.endswith("/profiles")]
    return asked[-1].get("updateSince") if asked else None


def test_an_ordinary_users_config_and_odd_records_end_to_end(
    spark: SparkSession, tmp_path: Path, account: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    ds = account.dataset
    exports = tmp_path / "exports"
    events = write_exports(exports)
    path = write_yaml(
        tmp_path / "sync.yaml",
        USER_YAML.format(account=ACCOUNT, source=SOURCE, url=account.url, exports=exports,
                         raw=tmp_path / "raw", tables=tmp_path / "t"),
    )  # fmt: skip
    config = load_config(path)
    assert config.sync.start_date == "2025-06-01T00:00:00"  # an unquoted YAML date
    assert any("profile_id" not in u or u["profile_id"] is None for u in ds.unsubscribes)

    first = run(spark, config)
    assert first.ok, errors(first)
    assert_rows(spark, config, "profiles", expected_profiles(ds, None))
    assert_rows(spark, config, "member_lists", expected_member_lists(ds))
    assert_tables_match(spark, config, ds, ("lists", "unsubscribes"))
    assert_rows(spark, config, "email_events", expected.email_events(events, SOURCE, ACCOUNT))
    no_profile = read_table(spark, config, "unsubscribes").where("profile_id IS NULL")
    assert no_profile.count() == sum(1 for u in ds.unsubscribes if not u.get("profile_id"))
    streams = by_stream(first)
    assert (streams["member_lists"].collapsed, streams["email_events"].collapsed) == (1, 1)
    assert streams["profiles"].bad_values == 2  # properties and dates of the odd profile
    assert streams["lists"].quarantined == 3
    runs = spark.read.format("delta").load(config.table_location(RUNS_TABLE))
    assert {(r["stream"], r["collapsed"]) for r in runs.collect()} == {
        ("lists", 0), ("profiles", 0), ("member_lists", 1), ("unsubscribes", 0),
        ("email_events", 1),
    }  # fmt: skip

    # A day later, from a notebook whose session is in Asia/Kolkata: the same rows and
    # cursors as in UTC (an export time without an offset is UTC), and the session's zone
    # is left as it was.
    ds.advance_day()
    later_event = {"event_id": "ev-kolkata", "to_address": "k@example.com",
                   "event_type": "open", "dt_occurred": "2025-12-31 10:00:00"}  # fmt: skip
    (exports / "later.csv").write_bytes(csv_bytes(EXPORT_COLUMNS, [later_event]))
    events.append(later_event)
    account.reset_log()
    spark.conf.set("spark.sql.session.timeZone", "Asia/Kolkata")
    try:
        second = run(spark, config)
        assert spark.conf.get("spark.sql.session.timeZone") == "Asia/Kolkata"
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert second.ok, errors(second)
    bound = last_profiles_bound(account)
    assert bound is not None
    assert_rows(spark, config, "profiles", expected_profiles(ds, bound))
    assert_rows(spark, config, "member_lists", expected_member_lists(ds))
    assert_tables_match(spark, config, ds, ("lists", "unsubscribes"))
    assert_rows(spark, config, "email_events", expected.email_events(events, SOURCE, ACCOUNT))
    committed = cursors(spark, config)
    assert committed["profiles"] == {"": max(p["update_since"] for p in ds.profiles
                                             if p.get("update_since"))[:19]}  # fmt: skip
    assert committed["unsubscribes"] == {"": max(u["timestamp"] for u in ds.unsubscribes)
                                         [:19].replace(" ", "T")}  # fmt: skip

    # Nothing new since, but the cursor moved: the lookback re-reads the last changes, all
    # merged before, and the profile without update_since under a later bound. Its row
    # takes the new bound (the pull is not skipped as "the same records as last time").
    account.reset_log()
    third = run(spark, config, streams=("profiles", "lists"))
    assert third.ok, errors(third)
    later = last_profiles_bound(account)
    assert later is not None and later > bound
    assert_rows(spark, config, "profiles", expected_profiles(ds, later))

    # The odd /lists elements were read by every run (lists, member_lists): quarantined once.
    quarantine = spark.read.format("delta").load(config.table_location(QUARANTINE_TABLE))
    assert_frames_equal(
        quarantine.select("stream", "reason", "raw"),
        spark.createDataFrame(
            [("lists", "record does not match the expected shape", "a string"),
             ("lists", "missing required field 'id'", None),
             ("lists", "missing required field 'id'", '{"title":"no id"}')],
            "stream string, reason string, raw string",
        ))  # fmt: skip


# --- an account that changes while it is pulled -------------------------------------------


def assert_profiles_with_deleted(spark: SparkSession, config: Config, ds: Dataset) -> None:
    """The current profiles exactly; besides them only deleted ones."""
    gone = {p["id"]: p for p in ds.deleted}
    table = read_table(spark, config, "profiles")
    current = table.where(~F.col("profile_id").isin(list(gone) or [""]))
    schema = TABLES["profiles"].schema
    schema.fields = [f for f in schema.fields if f.name != SYNCED_AT]
    assert_frames_equal(current, spark.createDataFrame(expected.profiles(ds, SOURCE, ACCOUNT),
                       schema))  # fmt: skip
    # A deleted profile stays as it was when last fetched (an update made just before its
    # deletion may never be fetched): its key and id are right, whatever the version.
    kept = table.where(F.col("profile_id").isin(list(gone) or [""]))
    keys = {r["profile_id"]: r[KEY_COLUMN] for r in kept.collect()}
    assert all(key == expected.md5(SOURCE, pid) for pid, key in keys.items())
    assert table.groupBy(KEY_COLUMN).count().where("count > 1").isEmpty()


def live_config(tmp_path: Path, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    path = write_yaml(
        tmp_path / "live.yaml",
        f"""\
account_id: {ACCOUNT}
source_id: {SOURCE}
api: {{base_url: "{server.url}", key_env: OMETRIA_TEST_KEY, page_size: 40,
       requests_per_second: 200}}
storage: {{raw_path: "{tmp_path / "raw"}", tables_path: "{tmp_path / "t"}"}}
sync:
  streams: [lists, profiles, member_lists, unsubscribes]
  start_date: 2025-06-01T00:00:00Z
  lookback_minutes: 5
""",
    )
    return load_config(path)


def test_a_live_account_loses_nothing(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiles on early pages are updated and deleted while later pages are fetched, each
    request moves the account's clock on 2 minutes (a pull outlasts the 5-minute
    lookback), pages of list changes and unsubscribes are capped at 4 records, and a
    record is stamped in 2099. Two runs later every table is exact."""
    ds = Dataset.generate(seed=37, profiles=400, lists=2)
    with EmulatorServer(ds, api_key=KEY) as server:
        config = live_config(tmp_path, server, monkeypatch)
        server.page_caps = {"changes": 4, "unsubscribes": 4}
        server.live = LiveChanges(seconds_per_request=120, updates=1, deletes=1,
                                  unsubscribes=1, list_changes=1, paths=("/profiles",),
                                  window=0.3)  # fmt: skip
        clock = ds.now
        first = run(spark, config)
        assert first.ok, errors(first)
        assert len(ds.deleted) >= 10
        # The profiles cursor stops one second before the server's clock at the pull's
        # first answer (each request moved it on 2 minutes): the updates on early pages
        # meanwhile are after it, for the next run to fetch.
        first_answer = clock + timedelta(seconds=120)
        committed = cursors(spark, config)
        assert (
            committed["profiles"][""] == f"{first_answer - timedelta(seconds=1):%Y-%m-%dT%H:%M:%S}"
        )

        server.live = None
        second = run(spark, config)
        assert second.ok, errors(second)
        assert_profiles_with_deleted(spark, config, ds)
        assert_tables_match(spark, config, ds, ("lists", "member_lists", "unsubscribes"))
        paging = json.loads((tmp_path / "raw" / "_paging.json").read_text(encoding="utf-8"))
        assert paging["list_changes"]["cap"] == paging["unsubscribes"]["cap"] == 4

        # A record stamped in 2099 loads, and is reported; the cursors stop at the server's
        # clock, so the next day's changes still arrive.
        ds.add_future_records(datetime(2099, 1, 1, tzinfo=UTC))
        third = run(spark, config)
        assert third.ok, errors(third)
        for stream in ("profiles", "member_lists", "unsubscribes"):
            warning = by_stream(third)[stream].warnings or ""
            assert "stamped after the server's clock (latest 2099-01-01T00:00:00)" in warning
        assert all(c < "2099" for scopes in cursors(spark, config).values()
                   for c in scopes.values())  # fmt: skip
        ds.advance_day()
        fourth = run(spark, config)
        assert fourth.ok, errors(fourth)
        assert_profiles_with_deleted(spark, config, ds)
        assert_tables_match(spark, config, ds, ("lists", "member_lists", "unsubscribes"))


# --- answers that must fail a stream, never end it "cleanly" --------------------------------


@pytest.fixture(scope="module")
def synced(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmulatorServer, Config]]:
    root = tmp_path_factory.mktemp("statuses")
    ds = Dataset.generate(seed=41, profiles=200, lists=2)
    with pytest.MonkeyPatch.context() as mp, EmulatorServer(ds, api_key=KEY) as server:
        config = live_config(root, server, mp)
        config = dataclasses.replace(
            config,
            api=dataclasses.replace(config.api, max_attempts=2, max_retry_wait_seconds=5),
        )
        assert run(spark, config).ok
        yield server, config


# Each case: the faults of one run, (fault, path, headers) each, and the streams they fail
# with the reason each must name. Two runs hold all the odd answers.
CASES = [
    ("404s-and-a-redirect", [
        ("404", "/profiles", None),
        ("404", "/lists/3001/changes", None),
        ("302", "/unsubscribes", {"Location": "http://127.0.0.2:9/x"}),
    ], {
        "profiles": "/profiles not found (HTTP 404; is api.base_url right?)",
        "member_lists": "although /lists still has list 3001",
        "unsubscribes": "a redirect to http://127.0.0.2:9, not the host of api.base_url",
    }),
    ("418-and-a-day-long-retry-after", [
        ("429", "/profiles", {"Retry-After": "86400"}),
        ("404", "/unsubscribes", None),
        ("418", "/lists", None),
    ], {
        "profiles": "longer than api.max_retry_wait_seconds",
        "unsubscribes": "/unsubscribes not found (HTTP 404",
        "lists": "/lists answered HTTP 418",
        "member_lists": "/lists answered HTTP 418",
    }),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_odd_answers_fail_their_streams_and_keep_their_cursors(
    spark: SparkSession, synced: tuple[EmulatorServer, Config], case: tuple[Any, ...]
) -> None:
    """No answer but 200 ends a request "cleanly": each fails its stream with the reason,
    the stream's cursor and table stay, the other streams load, a rerun completes."""
    server, config = synced
    _, faults, failing = case
    ds = server.dataset
    before = {name: build(ds, SOURCE, ACCOUNT) for name, build in expected.BUILDERS.items()}
    committed = cursors(spark, config)
    ds.advance_day()
    for fault, path, headers in faults:
        server.inject(fault, count=3, path=path, headers=headers)
    report = run(spark, config)
    with server._lock:
        server._faults.clear()
    assert {r.stream for r in report.streams if r.status == "failed"} == set(failing)
    for stream, reason in failing.items():
        error = errors(report)[stream] or ""
        assert reason in error and KEY not in error, error
        assert cursors(spark, config).get(stream) == committed.get(stream)
        assert_rows(spark, config, stream, before[stream])
    assert_tables_match(spark, config, ds, tuple(s for s in API if s not in failing))
    rerun = run(spark, config)
    assert rerun.ok, errors(rerun)
    assert_tables_match(spark, config, ds)


def test_a_wrong_base_url_fails_every_api_stream(
    spark: SparkSession, synced: tuple[EmulatorServer, Config]
) -> None:
    server, config = synced
    wrong = dataclasses.replace(
        config, api=dataclasses.replace(config.api, base_url=server.url.replace("/v2", "/v3"))
    )
    report = run(spark, wrong)
    assert {r.stream: r.status for r in report.streams} == dict.fromkeys(API, "failed")
    assert all("HTTP 404" in (r.error or "") for r in report.streams)


def test_a_deleted_list_is_skipped_and_the_others_load(
    spark: SparkSession, synced: tuple[EmulatorServer, Config]
) -> None:
    """A list deleted between the plan and its changes' request (404, and gone from
    /lists): nothing to land for it; the other lists load; its rows stay. (Last of the
    tests on ``synced``: the account loses a list.)"""
    server, config = synced
    ds = server.dataset
    gone = ds.lists[1]["id"]
    kept_rows = [r for r in expected.member_lists(ds, SOURCE, ACCOUNT) if r[1] == gone]
    ds.advance_day()
    original = server._route

    def route(path: str, params: dict[str, str]) -> tuple[int, Any]:
        if path.endswith(f"/lists/{gone}/changes"):  # deleted right after the plan
            with ds.lock:
                ds.lists = [x for x in ds.lists if x["id"] != gone]
                ds.list_changes.pop(gone, None)
        return original(path, params)

    server._route = route  # type: ignore[method-assign]
    try:
        report = run(spark, config, streams=("member_lists",))
    finally:
        server._route = original  # type: ignore[method-assign]
    assert report.ok, errors(report)
    want = [*expected.member_lists(ds, SOURCE, ACCOUNT), *kept_rows]
    assert_rows(spark, config, "member_lists", want)


# --- the "merged before" skip looks at the tables ------------------------------------------


def test_new_or_dropped_tables_are_filled_not_skipped(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing new in the account, but the tables are not the ones the last run wrote: the
    user pointed the job at new tables (same landing zone), or dropped a table by hand
    (its cursor, or its loaded-files record, still there). Each is loaded whole again."""
    ds = Dataset.generate(seed=43, profiles=120, lists=1)
    events = glob_events()
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "e.csv").write_bytes(csv_bytes(EXPORT_COLUMNS, events))
    with EmulatorServer(ds, api_key=KEY) as server:
        config = live_config(tmp_path, server, monkeypatch)
        config = dataclasses.replace(
            config,
            exports=dataclasses.replace(config.exports, email_events_path=str(exports)),
            sync=dataclasses.replace(config.sync, streams=(*API, "email_events")),
        )
        assert run(spark, config).ok
        moved = dataclasses.replace(
            config, storage=dataclasses.replace(config.storage, tables_path=str(tmp_path / "t2"))
        )
        # What a run killed while creating its first tables leaves there (measured: the
        # folder with _delta_log/_staged_commits and no commit): taken as no table.
        for name in ("_sync_state", "lists"):
            (tmp_path / "t2" / name / "_delta_log" / "_staged_commits").mkdir(parents=True)
        report = run(spark, moved)
        assert report.ok, errors(report)
        assert_tables_match(spark, moved, ds, API)
        assert_rows(spark, moved, "email_events", expected.email_events(events, SOURCE, ACCOUNT))
        # Tables dropped by hand are written again, whole.
        for name in ("lists", "unsubscribes", "profiles", "email_events"):
            shutil.rmtree(tmp_path / "t2" / name)
        again = run(spark, moved)
        assert again.ok, errors(again)
        assert_tables_match(spark, moved, ds, API)
        assert_rows(spark, moved, "email_events", expected.email_events(events, SOURCE, ACCOUNT))


def test_a_table_folder_with_other_files_and_no_commit_is_an_error(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files that are not Delta's in a folder without a commit are someone else's: a clear
    error naming them, and they are left alone."""
    ds = Dataset.generate(seed=47, profiles=20, lists=1)
    stray = tmp_path / "t" / "lists"
    (stray / "_delta_log").mkdir(parents=True)
    (stray / "notes.txt").write_text("mine", encoding="utf-8")
    with EmulatorServer(ds, api_key=KEY) as server:
        config = live_config(tmp_path, server, monkeypatch)
        failed = run(spark, config, streams=("lists",))
    assert "holds files (notes.txt) but no Delta commit" in (errors(failed)["lists"] or "")
    assert (stray / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_key_that_is_not_one_line_fails_the_api_streams_unshown(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = Dataset.generate(seed=67, profiles=20, lists=1)
    with EmulatorServer(ds, api_key=KEY) as server:
        config = live_config(tmp_path, server, monkeypatch)
        monkeypatch.setenv("OMETRIA_TEST_KEY", KEY[:9] + "\n" + KEY[9:])
        report = run(spark, config, streams=("lists", "profiles"))
        assert server.request_log == []  # never sent
    assert {r.status for r in report.streams} == {"failed"}
    for record in report.streams:
        assert "not one line of printable text" in (record.error or "")
        assert KEY[9:] not in (record.error or "") and KEY[:9] not in (record.error or "")
