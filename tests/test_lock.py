"""One sync of the same landing zone at a time: a live holder refuses others, a dead one
does not, and of runs racing for a free lock exactly one wins (locally and on S3)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.landing import Landing
from ometria_spark.lock import RunLock, SyncLockedError
from ometria_spark.storage import S3Storage, Storage, storage_for
from ometria_spark.sync import run
from tests.conftest import BUCKET
from tests.test_sync import KEY, make_config


@pytest.fixture()
def config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Config, EmulatorServer]]:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    with EmulatorServer(Dataset.generate(seed=1, profiles=20, lists=2), api_key=KEY) as server:
        yield make_config(tmp_path, server), server


def lock_of(cfg: Config) -> RunLock:
    landing = Landing(cfg.storage.raw_path, storage_for(cfg.storage.raw_path))
    return RunLock(landing.root, landing.storage)


def tickets(lock: RunLock) -> list[dict[str, object]]:
    """Every ticket left in the lock folder, oldest first."""
    names = sorted(lock.storage.list_names(lock.folder))
    return [json.loads(lock.storage.read_text(f"{lock.folder}/{name}")) for name in names]


def rewrite_holder(lock: RunLock, **changes: object) -> None:
    """Change the current holder's ticket in place (a crash or a slow run, simulated)."""
    path = lock._path(lock._tickets()[-1])
    holder = json.loads(Path(path).read_text(encoding="utf-8"))
    Path(path).write_text(json.dumps({**holder, **changes}), encoding="utf-8")


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_live_holder_refuses_and_a_dead_or_expired_one_does_not(
    spark: SparkSession, config: tuple[Config, EmulatorServer]
) -> None:
    cfg, server = config
    other = lock_of(cfg)
    other.acquire("run-elsewhere", timeout_minutes=60)  # this (live) process holds it

    refused = run(spark, cfg, streams=("lists",))
    (record,) = refused.streams
    assert record.status == "refused"
    assert record.error is not None
    assert record.error.startswith("another sync holds the lock: run run-elsewhere on ")
    assert server.request_log == []  # it did nothing
    assert not Path(cfg.table_location("lists")).exists()

    # The holder's process died (a crash): the next run takes the lock over (deleting the
    # dead holder's ticket) and gives it back: its own two tickets are left.
    rewrite_holder(other, pid=dead_pid())
    taken = run(spark, cfg, streams=("lists",))
    assert taken.ok, taken.streams
    left = [(t.get("released"), t["owner"]) for t in tickets(other)]
    assert left == [(None, taken.run_id), (True, taken.run_id)]

    # A live holder whose time is up is stale too.
    other.acquire("run-slow", timeout_minutes=60)
    rewrite_holder(other, expires_at="2000-01-01T00:00:00+00:00")
    assert run(spark, cfg, streams=("lists",)).ok
    # The slow run, when it finally ends, learns it was taken over and leaves things be.
    other.release("run-slow")
    assert tickets(other)[-1].get("released") is True


def race(make_lock: list[RunLock]) -> list[str]:
    """Let the locks acquire at the same instant; return each one's outcome."""
    outcomes = ["?"] * len(make_lock)
    barrier = threading.Barrier(len(make_lock))

    def contend(i: int) -> None:
        barrier.wait()
        try:
            make_lock[i].acquire(f"run-{i}", 60)
            outcomes[i] = "won"
        except SyncLockedError:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(make_lock))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


class SlowListing:
    """A storage whose listings return late, so racing runs all see the same tickets."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def list_names(self, folder: str) -> list[str]:
        names = self.inner.list_names(folder)
        time.sleep(0.2)
        return names

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def check_races(root: str, make_storage: Callable[[], Storage], rounds: int) -> None:
    for round_ in range(rounds):
        locks = [RunLock(root, SlowListing(make_storage())) for _ in range(3)]  # type: ignore[arg-type]
        outcomes = race(locks)
        assert sorted(outcomes) == ["refused", "refused", "won"], (round_, outcomes)
        winner = outcomes.index("won")
        assert tickets(locks[winner])[-1]["owner"] == f"run-{winner}"
        locks[winner].release(f"run-{winner}")


def test_runs_racing_for_the_lock_exactly_one_wins(tmp_path: Path) -> None:
    root = str(tmp_path / "raw")
    check_races(root, lambda: storage_for(root), rounds=20)


def test_the_lock_on_s3_uses_conditional_writes(s3_endpoint: str) -> None:
    def storage() -> S3Storage:
        return S3Storage(s3_endpoint, "us-east-1")

    root = f"s3://{BUCKET}/raw"
    assert storage().create_exclusive(f"{root}/x", "first")
    assert not storage().create_exclusive(f"{root}/x", "second")
    assert storage().read_text(f"{root}/x") == "first"

    held = RunLock(root, storage())
    held.acquire("run-a", 60)
    with pytest.raises(SyncLockedError, match="another sync holds the lock: run run-a"):
        RunLock(root, storage()).acquire("run-b", 60)
    held.release("run-a")
    check_races(root, storage, rounds=5)
