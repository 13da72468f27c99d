"""End to end: run() against the emulator over real HTTP into real Delta tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from ometria_spark.client import OmetriaClient
from ometria_spark.config import Config, config_from_dict
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.extract import land, make_plan
from ometria_spark.landing import Landing
from ometria_spark.storage import storage_for
from ometria_spark.sync import RunReport, run
from ometria_spark.tables import SYNCED_AT, TABLES
from tests import expected
from tests.frames import assert_rows_equal

API_STREAMS = ("lists", "profiles", "member_lists", "unsubscribes")
KEY = "test-key-5f1c0ffee"
SOURCE = "src-e2e"
ACCOUNT = "acct-e2e"


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=11, profiles=600, lists=3), api_key=KEY) as server:
        yield server


def make_config(tmp_path: Path, server: EmulatorServer, **api: Any) -> Config:
    return config_from_dict(
        {
            "account_id": ACCOUNT,
            "source_id": SOURCE,
            "api": {"base_url": server.url, "key_env": "OMETRIA_TEST_KEY", "page_size": 100,
                    "requests_per_second": 200, **api},
            "storage": {"raw_path": str(tmp_path / "raw"), "tables_path": str(tmp_path / "t"),
                        "schema": "ometria_e2e"},
            "sync": {"streams": list(API_STREAMS), "start_date": "2025-06-01"},
        }
    )  # fmt: skip


def table(spark: SparkSession, config: Config, name: str) -> DataFrame:
    return spark.read.format("delta").load(config.table_location(name)).drop(SYNCED_AT)


def assert_tables_match(
    spark: SparkSession, config: Config, ds: Dataset, streams: tuple[str, ...] = API_STREAMS
) -> None:
    for name, build in expected.BUILDERS.items():
        if name not in streams:
            continue
        spec = TABLES[name]
        schema = spec.schema
        schema.fields = [f for f in schema.fields if f.name != SYNCED_AT]
        assert_rows_equal(table(spark, config, name), build(ds, SOURCE, ACCOUNT), schema)


def counts(report: RunReport) -> dict[str, tuple[str, int, int]]:
    return {r.stream: (r.status, r.rows_inserted, r.rows_updated) for r in report.streams}


@pytest.mark.usefixtures("product_codegen")  # generated code stays covered
def test_full_then_incremental_then_nothing_new(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)
    ds = emulator.dataset
    # The session is shared: an earlier test's run may hold the name (it is not re-pointed).
    spark.sql("DROP TABLE IF EXISTS ometria_e2e.profiles")

    phases: list[str] = []
    first = run(spark, config, on_phase=phases.append)
    assert first.ok, [r.error for r in first.streams]
    assert_phases(phases)
    n_changes = sum(len(c) for c in ds.list_changes.values())
    assert counts(first) == {
        "lists": ("succeeded", 3, 0),
        "profiles": ("succeeded", 600, 0),
        "member_lists": ("succeeded", n_changes, 0),
        "unsubscribes": ("succeeded", len(ds.unsubscribes), 0),
    }
    assert_tables_match(spark, config, ds)
    assert spark.table("ometria_e2e.profiles").count() == 600  # registered by name

    # A "day" of changes: only changed profiles are requested, and merged as updates.
    before = {p["id"]: p for p in ds.profiles}
    ds.advance_day()
    changed = [p for p in ds.profiles if p["id"] in before and p != before[p["id"]]]
    added = [p for p in ds.profiles if p["id"] not in before]
    assert changed and added
    emulator.reset_log()
    second = run(spark, config)
    assert second.ok, [r.error for r in second.streams]
    profile_requests = [r for r in emulator.request_log if r.path.endswith("/profiles")]
    assert all("updateSince" in r.params for r in profile_requests)
    assert len(profile_requests) == (len(changed) + len(added)) // 100 + 1
    status, inserted, updated = counts(second)["profiles"]
    assert (status, inserted, updated) == ("succeeded", len(added), len(changed))
    assert_tables_match(spark, config, ds)

    # Nothing new: every table unchanged, nothing inserted or updated, no Delta commit at
    # all (the re-read records are known by digest, or equal to the table's rows).
    versions = {s: latest_version(spark, config, s) for s in API_STREAMS}
    third = run(spark, config)
    assert {s: (i, u) for s, (_, i, u) in counts(third).items()} == {s: (0, 0) for s in API_STREAMS}
    assert_tables_match(spark, config, ds)
    assert {s: latest_version(spark, config, s) for s in API_STREAMS} == versions


def assert_phases(phases: list[str]) -> None:
    """A first sync reports each phase of ``ometria_spark.phases`` in order per stream, and
    the creation of every table it writes (a data table is created by its first MERGE)."""
    tables = {"_sync_state", "_sync_runs", *API_STREAMS}
    assert {p.split(":", 1)[1] for p in phases if p.startswith("creating:")} == tables
    for stream in API_STREAMS:
        mine = [p.split(":")[0] for p in phases if p.endswith(f":{stream}")]
        mine = [p for i, p in enumerate(mine) if p != "extracting" or mine[i - 1] != p]
        want = ["extracting", "landed", "merging", "creating", "merged", "last-merged", "after"]
        assert mine == want, (stream, mine)


def latest_version(spark: SparkSession, config: Config, name: str) -> int:
    return int(DeltaTable.forPath(spark, config.table_location(name)).history(1).first()[0])


def test_cursors_moved_back_by_hand_are_honoured(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run starts pulling from the cursors its last merge noted in the landing zone, before
    Spark has read ``_sync_state``; if someone moved the committed cursors back meanwhile,
    that pull is set aside and the data is pulled again from the committed cursors."""
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)
    assert run(spark, config, streams=("profiles",)).ok
    # A user empties the table and forgets its cursor, to load it again.
    DeltaTable.forPath(spark, config.table_location("profiles")).delete()
    DeltaTable.forPath(spark, config.table_location("_sync_state")).delete("stream = 'profiles'")

    again = run(spark, config, streams=("profiles",))
    assert counts(again) == {"profiles": ("succeeded", 600, 0)}
    assert_tables_match(spark, config, emulator.dataset, streams=("profiles",))
    set_aside = list((tmp_path / "raw" / "profiles").glob("*/_abandoned"))
    assert [p.parent.name for p in set_aside] == [again.run_id]


def test_a_landed_pull_from_later_cursors_is_set_aside_on_resume(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early pull (planned from the cursors noted in the landing zone) that landed, but
    whose run died before checking it against ``_sync_state``, is resumed by the next run:
    it is checked then, and set aside when the committed cursors were moved back."""
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)
    assert run(spark, config, streams=("profiles",)).ok
    # The dead run's early pull: planned from the noted cursors, landed, never merged.
    landing = Landing(config.storage.raw_path, storage_for(config.storage.raw_path))
    noted = landing.last_merged_cursors("profiles")
    assert noted
    with OmetriaClient(emulator.url, KEY, page_size=100) as client:
        plan = make_plan(
            "profiles", run_id="20990101T000000Z-dead0001", client=client, page_size=100,
            cursors=noted, lookback_minutes=config.sync.lookback_minutes,
            start_date=config.sync.start_date, window_days=1, now=datetime.now(UTC),
        )  # fmt: skip
        landing.save_plan(plan)
        land(plan, client, landing)
    # Meanwhile a user empties the table and forgets its cursor, to load it again.
    DeltaTable.forPath(spark, config.table_location("profiles")).delete()
    DeltaTable.forPath(spark, config.table_location("_sync_state")).delete("stream = 'profiles'")

    again = run(spark, config, streams=("profiles",))
    assert counts(again) == {"profiles": ("succeeded", 600, 0)}
    assert_tables_match(spark, config, emulator.dataset, streams=("profiles",))
    assert (tmp_path / "raw" / "profiles" / plan.run_id / "_abandoned").exists()
