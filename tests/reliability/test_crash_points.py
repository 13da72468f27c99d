"""SIGKILL at every named phase of a sync, run after run, then one clean run: every table
equals what an uninterrupted sync of the same data writes.

Each killed run is `jobs/ometria_sync.py` in its own process (``OMETRIA_SPARK_CRASH_AT``),
so the kill loses the JVM, caches and half-done work as a real crash would. The kills are
chained (each run starts from the wreck the last one left), in one chain: the first sync
into no tables, killed at each phase, and a clean run (its own process); then a day of
changes and the incremental sync, killed at each phase, and a clean run (in this process:
a fresh run, so one JVM fewer to start). A killed run syncs only the stream it is killed
in (``--streams``: the streams before it would only be done again); the clean runs sync
all four. A crash point that never fires fails the test (the run would exit 0, not -9),
and after each kill the landing zone or the Delta log shows where it landed.

Phases: ``creating:T`` (killed by a timer while the table is created), ``extracting:S``
(2nd page landed, request unfinished), ``landed:S`` (pull landed, not merged),
``merging:S`` (killed by a timer half a second into the MERGE step), ``merged:S`` (MERGE
committed, cursor not), ``last-merged:S`` (cursor committed and noted, pull not marked
merged), ``after:S`` (the stream done, the run not recorded), for ``profiles`` and
``member_lists``; ``exports:merging`` (as ``merging:S``), ``exports:merged`` (MERGE
committed, files not recorded) and ``after:email_events`` for the export files.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from ometria_spark.cli import CRASH_AT_ENV, CRASH_DELAY_ENV, crash_hook_from_env
from ometria_spark.config import Config, load_config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import EXPORT_COLUMNS, csv_bytes, export_files, write_local
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.exports import RAW_FIELDS
from ometria_spark.phases import PHASES, no_hook, phase_of
from ometria_spark.state import LOADED_FILES_TABLE, QUARANTINE_TABLE, RUNS_TABLE, STATE_TABLE
from ometria_spark.sync import run
from ometria_spark.tables import EMAIL_EVENTS, SYNCED_AT
from tests import expected
from tests.frames import assert_rows_equal
from tests.reliability.chaos import crash_templates
from tests.test_job import sync, write_config
from tests.test_sync import ACCOUNT, KEY, SOURCE, assert_tables_match

API = ("lists", "profiles", "member_lists")
MERGE_KILL_DELAY = 0.5  # seconds after ``merging:S`` / ``exports:merging`` (see Chain.kill_at)
STREAMS = [*API, "email_events"]
LA = "America/Los_Angeles"

# One extra export file: a good event, one whose time does not parse (NULL event_at: only
# the MERGE's ``OR t.event_at IS NULL`` keeps a re-merge from adding it again), one without
# to_address (a key part: "" in its key, it loads) and one with no key part (quarantined,
# once).
EXTRA_EVENT = {"event_id": "ev-extra", "uuid": "u-extra", "to_address": "extra@example.com",
               "event_type": "open", "dt_occurred": "2025-12-30 10:00:00",
               "campaign_title": "Ünïcödé, \"quoted\"", "campaign_type": "mass"}  # fmt: skip
NO_TIME = {"event_id": "ev-no-time", "to_address": "extra@example.com", "event_type": "bounce",
           "dt_occurred": "30/12/2025", "bounce_class": "hard"}  # fmt: skip
NO_ADDRESS = {"event_id": "ev-no-address", "event_type": "click",
              "dt_occurred": "2025-12-30 10:00:01"}  # fmt: skip
NO_KEY = {"event_id": "ev-no-key", "campaign_title": "no key part at all"}


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=8, profiles=450, lists=3), api_key=KEY) as server:
        yield server


def write_sync_config(tmp_path: Path, server: EmulatorServer) -> Path:
    """``tests.test_job``'s config, with the export files and ``email_events`` added."""
    path = write_config(tmp_path, server)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["sync"]["streams"] = STREAMS
    data["exports"] = {"email_events_path": str(tmp_path / "exports"), "format": "csv"}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- the landing zone and Delta logs, read without Spark ------------------------------------


def pulls(raw: Path, stream: str) -> list[Path]:
    """The stream's pulls, oldest first (run ids sort by start time; the index folders
    ``_open``/``_done`` are not pulls)."""
    return sorted(p for p in (raw / stream).iterdir() if p.is_dir() and p.name[0] != "_")


def pages(pull: Path) -> list[str]:
    return sorted(p.name for p in pull.glob("r*-p*.json"))


def requests_done(pull: Path) -> tuple[int, int]:
    """(requests finished, requests planned)."""
    planned = len(json.loads((pull / "_plan.json").read_text(encoding="utf-8"))["requests"])
    return len(list(pull.glob("r*.done"))), planned


def merged(pull: Path) -> bool:
    return (pull / "_merged").exists()


def last_merged_run(raw: Path, stream: str) -> str | None:
    path = raw / stream / "_last_merged.json"
    return json.loads(path.read_text(encoding="utf-8"))["run_id"] if path.exists() else None


def commits(tables: Path, name: str) -> int:
    """Commits in the table's Delta log (0: no table)."""
    return len(list((tables / name / "_delta_log").glob("*.json")))


# --- expected rows --------------------------------------------------------------------------


def cursor_text(values: Iterator[Any]) -> str:
    newest = max(t for t in (expected.when(v) for v in values) if t is not None)
    return newest.strftime("%Y-%m-%dT%H:%M:%S")


def expected_cursors(ds: Dataset) -> list[tuple[str, str, str]]:
    """The newest source time of the data per stream and scope: the cursors may be neither
    later (a gap) nor earlier (they only move on after a MERGE that covers them)."""
    rows = [("profiles", "", cursor_text(p.get("update_since") for p in ds.profiles))]
    rows += [
        ("member_lists", list_id, cursor_text(c["timestamp"] for c in changes))
        for list_id, changes in ds.list_changes.items()
        if changes
    ]
    return rows


def read(spark: SparkSession, config: Config, name: str) -> DataFrame:
    return spark.read.format("delta").load(config.table_location(name))


def same(actual: DataFrame, rows: list[tuple[Any, ...]], schema: StructType | str) -> None:
    assert_rows_equal(actual, rows, schema)


def assert_everything_loaded_once(
    spark: SparkSession,
    config: Config,
    ds: Dataset,
    *,
    events: list[dict[str, Any]],
    export_paths: list[Path],
    bad_file: Path,
    clean_runs: int,
) -> None:
    """Every table equals an uninterrupted sync's; the job's own tables hold no duplicate."""
    assert_tables_match(spark, config, ds, API)
    schema = StructType([f for f in EMAIL_EVENTS.schema.fields if f.name != SYNCED_AT])
    want_events = expected.email_events(events, SOURCE, ACCOUNT)
    same(read(spark, config, "email_events").drop(SYNCED_AT), want_events, schema)

    same(
        read(spark, config, STATE_TABLE).select("stream", "scope", "cursor"),
        expected_cursors(ds),
        "stream string, scope string, cursor string",
    )
    # Each export file recorded once.
    same(
        read(spark, config, LOADED_FILES_TABLE).select("path"),
        [(f"file:{p}",) for p in export_paths],
        "path string",
    )
    # The one bad record, once, though its file was read by several killed runs.
    quarantine = read(spark, config, QUARANTINE_TABLE)
    assert quarantine.select("quarantine_id").distinct().count() == quarantine.count()
    raw = json.dumps({n: NO_KEY[n] for n in RAW_FIELDS if n in NO_KEY}, separators=(",", ":"))
    reason = "missing every key field (to_address, event_type, dt_occurred)"
    same(
        quarantine.select("stream", "source_file", "reason", "raw"),
        [("email_events", f"file:{bad_file}", reason, raw)],
        "stream string, source_file string, reason string, raw string",
    )
    # Killed runs record nothing; each clean run one row per stream.
    runs = read(spark, config, RUNS_TABLE)
    assert runs.select("run_id", "stream").distinct().count() == runs.count()
    assert runs.select("run_id").distinct().count() == clean_runs
    same(
        runs.select("stream", "status"),
        [(s, "succeeded") for _ in range(clean_runs) for s in STREAMS],
        "stream string, status string",
    )


# --- the chains ------------------------------------------------------------------------------


class Chain:
    """Runs of the job in its own process, each started from what the last one left."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.outputs: list[str] = []

    def kill_at(self, crash_at: str, tz: str = "UTC") -> None:
        # A MERGE step's kill comes half a second in: a cold JVM takes longer than that
        # to commit it (its de-duplication, the table's creation, the MERGE itself), so no
        # MERGE has committed yet; a second, the hook's default, outlasted the whole step
        # once the job got faster.
        delay = MERGE_KILL_DELAY if "merging" in crash_at.split(":") else None
        result = sync(self.config_path, crash_at=crash_at, crash_delay=delay, tz=tz,
                      streams=killed_stream(crash_at))  # fmt: skip
        self.outputs.append(result.stdout + result.stderr)
        assert result.returncode == -9, (crash_at, result.returncode, result.stderr[-3000:])

    def clean_run(self, tz: str) -> None:
        result = sync(self.config_path, tz=tz)
        self.outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr[-3000:]
        for stream in STREAMS:
            assert any(
                line.split()[:2] == [stream, "succeeded"] for line in result.stdout.splitlines()
            ), result.stdout

    def assert_no_key_anywhere(self, root: Path, runs: int) -> None:
        """Every run happened; the API key is in no output, landed page, table or lock file."""
        assert len(self.outputs) == runs
        assert not [text for text in self.outputs if KEY in text]
        leaks = [p for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
        assert leaks == []


def killed_stream(crash_at: str) -> str | None:
    """The one stream a killed run syncs (``--streams``): the one whose phase it is killed
    at (the export files' phases: email_events), so that no run redoes the streams before
    it (the clean runs sync them all); None (every stream) for a table's creation."""
    declared = phase_of(crash_at)
    assert declared is not None, crash_at
    if declared.scope == "table":
        return None
    return crash_at.partition(":")[2].partition("#")[0] if declared.scope else "email_events"


def first_exports(exports: Path, ds: Dataset) -> tuple[list[dict[str, Any]], list[Path], Path]:
    """The first day's export files and the resent file with the odd records: (the
    events that load, every file, the resent file)."""
    first_events = list(ds.email_events)
    export_paths = write_local(exports, export_files(first_events, files=2))
    bad_file = exports / "resent" / "email_events_extra.csv"
    bad_file.parent.mkdir()
    bad_file.write_bytes(csv_bytes(EXPORT_COLUMNS, [EXTRA_EVENT, NO_TIME, NO_ADDRESS, NO_KEY]))
    export_paths.append(bad_file)
    return [*first_events, EXTRA_EVENT, NO_TIME, NO_ADDRESS], export_paths, bad_file


@pytest.mark.slow
def test_a_sync_killed_at_every_phase_loses_and_duplicates_nothing(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chain: the first sync, into no tables, killed at each phase, then a clean run
    (its own process, in another time zone); a day of changes; the incremental sync
    killed at each phase, then a clean run (in this process: a fresh run all the same)."""
    config_path = write_sync_config(tmp_path, emulator)
    config = load_config(config_path)
    ds = emulator.dataset
    exports = tmp_path / "exports"
    events, export_paths, bad_file = first_exports(exports, ds)
    first_events = list(ds.email_events)
    chain = Chain(config_path)

    kill_the_first_sync(chain, tmp_path)
    chain.clean_run(tz=LA)
    assert_everything_loaded_once(
        spark, config, ds, events=events, export_paths=export_paths, bad_file=bad_file,
        clean_runs=1,
    )  # fmt: skip

    ds.advance_day()
    new_events = ds.email_events[len(first_events) :]
    known = {json.dumps(e, sort_keys=True) for e in first_events}
    assert new_events and not any(json.dumps(e, sort_keys=True) in known for e in new_events)
    # ... and an old event sent again, changed, in a later file: that copy wins.
    resent = {**first_events[0], "event_id": "ev-resent", "device_type": "watch"}
    new_events.append(resent)
    export_paths += write_local(exports / "day2", export_files(new_events, files=2))

    kill_the_incremental_sync(chain, tmp_path)
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    report = run(spark, config, register_names=False)
    assert {r.stream: r.status for r in report.streams} == dict.fromkeys(STREAMS, "succeeded")
    assert_everything_loaded_once(
        spark, config, ds, events=[*events, *new_events], export_paths=export_paths,
        bad_file=bad_file, clean_runs=2,
    )  # fmt: skip
    chain.assert_no_key_anywhere(tmp_path, runs=18)


def kill_the_first_sync(chain: Chain, root: Path) -> None:
    """The first sync, into no tables, killed at each phase of ``profiles`` and of the
    export files; after each kill the landing zone or the Delta log shows where."""
    kill_at = chain.kill_at
    raw, tables = root / "raw", root / "t"
    # Killed while creating its first table (a second into it): whatever it left, the
    # next runs must work (a table folder without a commit is taken as no table).
    kill_at("creating:_sync_state")
    kill_at("extracting:profiles#2")  # the 2nd page landed
    (p1,) = pulls(raw, "profiles")
    assert pages(p1) == ["r0000-p000000-o000000000.json", "r0000-p000001-o000000099.json"]
    assert requests_done(p1) == (0, 1) and not merged(p1)

    kill_at("merging:profiles", tz=LA)  # the resumed pull's first MERGE, killed mid-way
    assert len(pages(p1)) == 5 and requests_done(p1) == (1, 1) and not merged(p1)
    assert commits(tables, "profiles") <= 1  # no MERGE committed (at most the creation)

    kill_at("merged:profiles")
    assert commits(tables, "profiles") >= 2 and not merged(p1)
    assert last_merged_run(raw, "profiles") is None

    kill_at("last-merged:profiles", tz=LA)
    assert last_merged_run(raw, "profiles") == p1.name and not merged(p1)

    kill_at("landed:profiles")
    assert merged(p1)
    _, p2 = pulls(raw, "profiles")
    assert requests_done(p2) == (1, 1) and not merged(p2)

    kill_at("after:profiles", tz=LA)
    assert all(merged(p) for p in pulls(raw, "profiles"))

    kill_at("exports:merging")
    assert commits(tables, "email_events") <= 1
    assert commits(tables, LOADED_FILES_TABLE) == 0

    kill_at("exports:merged", tz=LA)
    assert commits(tables, "email_events") >= 2
    assert commits(tables, LOADED_FILES_TABLE) == 0


def kill_the_incremental_sync(chain: Chain, root: Path) -> None:
    """The next day's sync killed at each phase of ``member_lists`` (whose pull starts
    early, from the cursors the last merge noted) and of the new export files."""
    kill_at = chain.kill_at
    raw, tables = root / "raw", root / "t"
    kill_at("extracting:member_lists#2")  # in the pull started early, from the noted cursors
    *_, m1 = pulls(raw, "member_lists")
    done, planned = requests_done(m1)
    assert len(pages(m1)) == 2 and done < planned and not merged(m1)

    before = commits(tables, "member_lists")
    kill_at("merging:member_lists", tz=LA)
    assert requests_done(m1) == (planned, planned) and not merged(m1)
    assert commits(tables, "member_lists") == before

    kill_at("merged:member_lists")
    assert commits(tables, "member_lists") == before + 1 and not merged(m1)

    kill_at("last-merged:member_lists", tz=LA)
    assert last_merged_run(raw, "member_lists") == m1.name and not merged(m1)

    kill_at("landed:member_lists")
    *_, m2 = pulls(raw, "member_lists")
    assert merged(m1) and m2 != m1 and not merged(m2)
    assert requests_done(m2)[0] == requests_done(m2)[1]

    kill_at("after:member_lists", tz=LA)
    assert all(merged(p) for p in pulls(raw, "member_lists"))

    before = commits(tables, "email_events")
    kill_at("exports:merging")
    assert commits(tables, "email_events") == before

    before = commits(tables, LOADED_FILES_TABLE)
    kill_at("after:email_events", tz=LA)
    assert commits(tables, LOADED_FILES_TABLE) == before + 1


def test_the_crash_hook_is_none_unless_named_and_refuses_an_unknown_phase() -> None:
    """No variable: no hook. A hook for one phase passes every other one by (no kill, no
    timer armed). A name that is no declared phase is refused before the run starts."""
    assert crash_hook_from_env({}) is no_hook
    threads = threading.active_count()
    hook = crash_hook_from_env({CRASH_AT_ENV: "merging:lists", CRASH_DELAY_ENV: "0"})
    for name in ("merging:profiles", "merged:lists", "creating:lists", "exports:merging"):
        hook(name)
    hook = crash_hook_from_env({CRASH_AT_ENV: "extracting:profiles#3"})
    hook("extracting:profiles")
    hook("extracting:profiles")  # the 2nd: not yet
    assert threading.active_count() == threads
    for bad in ("merged-profiles", "extracted:profiles", "extracting:profiles#two"):
        with pytest.raises(ValueError, match="names no phase"):
            crash_hook_from_env({CRASH_AT_ENV: bad})


def test_every_phase_the_chains_kill_at_is_declared() -> None:
    """The chains and the chaos campaign name phases as ``ometria_spark.phases`` declares
    them: a renamed phase fails here, not as a kill that never fires."""
    named = ["creating:_sync_state", "after:email_events", "exports:merged", "last-merged:profiles"]
    assert all(phase_of(name) is not None for name in named)
    assert {t.template.partition("#")[0] for t in crash_templates()} == {
        p.template for p in PHASES if p.scope != "table"
    }
