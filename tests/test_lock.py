"""One sync of the same tables at a time: a live holder refuses others, a dead one does not."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.state import StateStore, SyncLockedError
from ometria_spark.sync import run
from tests.test_sync import KEY, make_config


@pytest.fixture()
def config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Config, EmulatorServer]]:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    with EmulatorServer(Dataset.generate(seed=1, profiles=20, lists=2), api_key=KEY) as server:
        yield make_config(tmp_path, server), server


def lock_rows(spark: SparkSession, store: StateStore) -> list[tuple[str, int]]:
    table = DeltaTable.forPath(spark, store.lock_ref.location).toDF()
    return [(r["owner"], r["pid"]) for r in table.collect()]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_live_holder_refuses_and_a_dead_or_expired_one_does_not(
    spark: SparkSession, config: tuple[Config, EmulatorServer]
) -> None:
    cfg, server = config
    other = StateStore(spark, cfg)
    other.acquire_lock("run-elsewhere", timeout_minutes=60)  # this (live) process holds it

    refused = run(spark, cfg, streams=("lists",))
    (record,) = refused.streams
    assert record.status == "refused"
    assert record.error is not None
    assert record.error.startswith("another sync holds the lock: run run-elsewhere on ")
    assert server.request_log == []  # it did nothing
    assert not Path(cfg.table_location("lists")).exists()

    # The holder's process died (a crash): the next run takes the lock over and releases it.
    lock = DeltaTable.forPath(spark, other.lock_ref.location)
    lock.update(set={"pid": str(dead_pid())})
    taken = run(spark, cfg, streams=("lists",))
    assert taken.ok, taken.streams
    assert lock_rows(spark, other) == []

    # A live holder whose time is up is stale too.
    other.acquire_lock("run-slow", timeout_minutes=60)
    lock.update(set={"expires_at": "current_timestamp() - INTERVAL 1 MINUTE"})
    assert run(spark, cfg, streams=("lists",)).ok


def test_two_runs_racing_for_the_lock_one_wins(
    spark: SparkSession, config: tuple[Config, EmulatorServer]
) -> None:
    cfg, _ = config
    StateStore(spark, cfg).acquire_lock("warm-up", 1)  # create the table before the race
    StateStore(spark, cfg).release_lock("warm-up")
    outcomes: dict[str, str] = {}

    def contend(run_id: str) -> None:
        try:
            StateStore(spark, cfg).acquire_lock(run_id, 60)
            outcomes[run_id] = "won"
        except SyncLockedError:
            outcomes[run_id] = "refused"

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["refused", "won"]
    (winner,) = [run_id for run_id, outcome in outcomes.items() if outcome == "won"]
    assert [owner for owner, _ in lock_rows(spark, StateStore(spark, cfg))] == [winner]
