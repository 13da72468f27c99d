"""One sync of the same landing zone at a time: a live holder refuses others, a dead one
does not, and of runs racing for a free lock exactly one wins (locally and on S3). The lock
is a lease: a holder killed on another host blocks for at most the lease, one that renews is
never taken over, and one stalled past its lease and taken over stops before its cursors."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
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

ROOT = Path(__file__).resolve().parent.parent


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
    other.acquire("run-elsewhere", lease_seconds=600)  # this (live) process holds it

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
    other.acquire("run-slow", lease_seconds=600)
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
            make_lock[i].acquire(f"run-{i}", 600)
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
    held.acquire("run-a", 600)
    with pytest.raises(SyncLockedError, match="another sync holds the lock: run run-a"):
        RunLock(root, storage()).acquire("run-b", 600)
    held.release("run-a")
    check_races(root, storage, rounds=5)


def hold_elsewhere(root: str, host: str, lease: float, hold: float) -> subprocess.Popen[str]:
    """A lock holder in its own process, on another (named) host; returns once it holds."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.lock_holder", root, host, str(lease), str(hold)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def expiry(lock: RunLock) -> float:
    """The current holder's lease end (epoch seconds)."""
    return datetime.fromisoformat(str(tickets(lock)[-1]["expires_at"])).timestamp()


def test_a_killed_holder_on_another_host_blocks_the_next_run_for_at_most_its_lease(
    spark: SparkSession, config: tuple[Config, EmulatorServer]
) -> None:
    """A driver killed on another host (a Databricks job cluster is a new host every run)
    can only be judged by its lease: the next run is refused until the lease lapses, then
    takes over, whatever host wrote the ticket."""
    cfg, server = config
    lease = 6.0
    holder = hold_elsewhere(cfg.storage.raw_path, "job-cluster-1", lease, hold=600)
    time.sleep(lease * 0.7)  # past its first renewal
    holder.send_signal(signal.SIGKILL)
    killed_at = time.time()
    holder.wait()
    lock = lock_of(cfg)
    blocked_until = expiry(lock)
    assert tickets(lock)[-1]["host"] == "job-cluster-1"
    assert killed_at < blocked_until <= killed_at + lease  # at most a lease from the kill

    refused = run(spark, cfg, streams=("lists",))
    assert [r.status for r in refused.streams] == ["refused"]
    assert server.request_log == []
    time.sleep(max(0.0, blocked_until - time.time()) + 0.1)
    taken = run(spark, cfg, streams=("lists",))
    assert taken.ok, taken.streams
    assert [(t.get("released"), t["owner"]) for t in tickets(lock)] == [
        (None, taken.run_id),
        (True, taken.run_id),
    ]


def test_a_run_longer_than_its_lease_is_never_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder that renews works three leases long: every attempt to take the lock in that
    time is refused, the holder never learns of a takeover, and the lock is free after it.
    (An attempt between the holder's release and its process's exit gets the lock without
    taking it over: that one ends the attempts.)"""
    caplog.set_level(logging.WARNING, logger="ometria_spark.lock")
    root = str(tmp_path / "raw")
    lease = 2.0
    holder = hold_elsewhere(root, "long-run-host", lease, hold=lease * 3)
    attempts = []
    while holder.poll() is None:
        caplog.clear()
        intruder = RunLock(root, storage_for(root), host="another-host")
        try:
            intruder.acquire("intruder", lease)
        except SyncLockedError as exc:
            assert "run run-on-long-run-host on long-run-host" in str(exc), exc
            attempts.append("refused")
        else:
            intruder.release("intruder")
            attempts.append("taken over" if "taking over" in caplog.text else "after release")
            break
        time.sleep(0.25)
    out, _ = holder.communicate(timeout=30)
    assert holder.returncode == 0
    assert attempts.count("refused") >= 15, attempts
    assert set(attempts) <= {"refused", "after release"}, attempts
    assert json.loads(out) == {"lost_to": None, "check": None}
    lock = RunLock(root, storage_for(root), host="another-host")
    lock.acquire("after-it", lease)
    lock.release("after-it")


def test_a_stalled_holder_taken_over_stops_before_committing_cursors(tmp_path: Path) -> None:
    """A driver stalled for longer than its lease (SIGSTOP: a GC pause, a frozen VM) is
    taken over; once it runs again its next renewal sees the newer ticket and its
    ``check`` (called before every cursor commit) refuses to go on."""
    root = str(tmp_path / "raw")
    lease = 3.0
    holder = hold_elsewhere(root, "stalled-host", lease, hold=lease * 2)
    holder.send_signal(signal.SIGSTOP)
    time.sleep(lease + 0.5)
    taker = RunLock(root, storage_for(root), host="another-host")
    taker.acquire("taker", 600)
    holder.send_signal(signal.SIGCONT)
    out, _ = holder.communicate(timeout=30)
    assert json.loads(out) == {
        "lost_to": "taker",
        "check": "this run's lock lease lapsed and run taker took the lock over; stopped "
        "before committing cursors (sync.lock_lease_seconds)",
    }
    # The stalled run's release did not free the taker's lock.
    with pytest.raises(SyncLockedError, match="run taker on another-host"):
        RunLock(root, storage_for(root), host="third-host").acquire("third", 600)
    taker.release("taker")


def test_a_run_whose_lock_was_taken_over_commits_no_cursor(
    spark: SparkSession, config: tuple[Config, EmulatorServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The run itself: when, between its MERGE and its cursor commit, another run takes
    the lock over (it judged this one's lease lapsed), this run's renewal sees it and the
    cursor commit refuses: the stream fails with that reason and ``_sync_state`` stays
    without its cursor (the UPSERT it made is idempotent: the new holder redoes it)."""
    cfg, _ = config
    cfg = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, lock_lease_seconds=3))
    lock = lock_of(cfg)

    def take_over(phase: str) -> None:
        if phase == "merged:profiles":
            top = lock._tickets()[-1]
            taker = {"owner": "taker", "host": "another-host", "pid": 1,
                     "acquired_at": "2026-01-01T00:00:00+00:00",
                     "expires_at": "2999-01-01T00:00:00+00:00"}  # fmt: skip
            assert lock.storage.create_exclusive(lock._path(top + 1), json.dumps(taker))
            time.sleep(1.5)  # the holder renews every second: its next renewal sees it

    report = run(spark, cfg, streams=("profiles",), on_phase=take_over)
    (record,) = report.streams
    assert (record.status, record.error) == (
        "failed",
        "LockLostError: this run's lock lease lapsed and run taker took the lock over; "
        "stopped before committing cursors (sync.lock_lease_seconds)",
    )
    state = spark.read.format("delta").load(cfg.table_location("_sync_state"))
    assert state.where("stream = 'profiles'").collect() == []
    assert tickets(lock)[-1]["owner"] == "taker"  # its release did not free the taker's lock
