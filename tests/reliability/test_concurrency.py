"""Concurrent runs and concurrent writers.

- A `jobs/ometria_sync.py` process started while a live run holds the lock refuses with a
  clear message and changes nothing; after the holder releases, a run succeeds with exact
  tables and frees the lock. (A lock that never refused would fail this.)
- A MERGE whose commit loses a race with another writer of the same Delta table (a real
  ``ConcurrentAppendException``, not a simulated one) is retried by ``merge_into``, and the
  table ends with exactly the rows of both writers, the later writer's for shared keys.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from ometria_spark import writer
from ometria_spark.config import load_config
from ometria_spark.delta_table import TableRef
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.landing import Landing
from ometria_spark.lock import RunLock
from ometria_spark.storage import storage_for
from ometria_spark.sync import run
from ometria_spark.tables import KEY_COLUMN, LISTS
from ometria_spark.writer import ensure_table, merge_into
from tests.frames import assert_frames_equal
from tests.reliability.leaks import assert_no_secret
from tests.test_job import STREAMS, sync, write_config
from tests.test_sync import KEY, assert_tables_match
from tests.test_writer import T1, T2, frame, row


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=13, profiles=300, lists=2), api_key=KEY) as server:
        yield server


def test_a_run_while_another_holds_the_lock_refuses_and_touches_nothing(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live holder (this test process, on this host) is running: the job's process must
    refuse with one clear line, report every stream refused, exit 1 and change nothing.
    Once the holder releases, a run succeeds with exact tables and frees the lock. (Runs
    racing for a free lock, exactly one winning, are in ``tests/test_lock.py``.)"""
    config_path = write_config(tmp_path, emulator)
    config = load_config(config_path)
    landing = Landing(config.storage.raw_path, storage_for(config.storage.raw_path))
    holder = RunLock(landing.root, landing.storage)
    holder.acquire("a-long-run", config.sync.lock_lease_seconds)

    refused = sync(config_path)
    assert_no_secret(refused.stdout, refused.stderr)
    assert refused.returncode == 1, refused.stderr[-2000:]
    reasons = [ln for ln in refused.stderr.splitlines() if ln.startswith("ometria-sync:")]
    assert len(reasons) == 1, refused.stderr[-2000:]
    assert reasons[0].startswith(
        "ometria-sync: refused to run: another sync holds the lock: run a-long-run on "
        f"{socket.gethostname()} (pid {os.getpid()}) since "
    ), reasons
    assert all(f"{s:<13}  refused" in refused.stdout for s in STREAMS), refused.stdout
    assert not (tmp_path / "t").exists()  # no table created, not even the job's own
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["_lock"]  # nothing pulled

    holder.release("a-long-run")
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    report = run(spark, config)
    assert report.ok, [r.error for r in report.streams]
    assert_tables_match(spark, config, emulator.dataset, tuple(STREAMS))
    for name in STREAMS:
        df = spark.read.format("delta").load(config.table_location(name))
        assert df.groupBy(KEY_COLUMN).count().where("count > 1").count() == 0
    # The run gave the lock back: its last ticket says released.
    top = max((tmp_path / "raw" / "_lock").glob("ticket-*.json"))
    assert json.loads(top.read_text(encoding="utf-8"))["released"] is True


def _gate(folder: str) -> Callable[[str | None], str | None]:
    """A pass-through for a UDF (run in a Python worker) that, once ``armed`` exists, tells
    it is running (``inside``) and waits for ``go``: it holds a MERGE open, mid-flight."""
    armed, inside, go = (os.path.join(folder, n) for n in ("armed", "inside", "go"))

    def gate(value: str | None) -> str | None:
        if os.path.exists(armed) and not os.path.exists(go):
            Path(inside).touch()
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.02)
        return value

    return gate


def test_a_merge_that_loses_a_commit_race_is_retried(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = TableRef(str(tmp_path / "lists"), is_path=True)
    # Created empty, as a first sync leaves it (by another run: its own ref would know the
    # table holds no row, and not read its history).
    ensure_table(spark, LISTS, TableRef(ref.location, is_path=True))
    gates = tmp_path / "gates"
    gates.mkdir()
    slow_rows = [row(f"L{i}", f"slow {i}", T1) for i in range(6)]
    fast_rows = [row(f"L{i}", f"fast {i}", T2) for i in range(3, 9)]
    hold = _gate(str(gates))
    gate = F.udf(lambda value: hold(value), StringType())  # a lambda: no type hints to infer
    # One partition: one blocked task, and the other core stays free for the other writer.
    slow_source = (
        frame(spark, slow_rows).coalesce(1).withColumn("list_title", gate(F.col("list_title")))
    )

    # Arm the gate when the slow writer is about to run its (insert-only) first MERGE:
    # its source, and so the UDF, is then read inside the MERGE's transaction.
    never_written = writer._never_written

    def arming(table: DeltaTable) -> bool:
        answer = never_written(table)
        if threading.current_thread().name == "slow-writer":
            (gates / "armed").touch()
        return answer

    monkeypatch.setattr(writer, "_never_written", arming)
    outcome: dict[str, Any] = {}

    def slow_writer() -> None:
        try:
            outcome["metrics"] = merge_into(spark, slow_source, LISTS, ref)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=slow_writer, name="slow-writer")
    thread.start()
    deadline = time.monotonic() + 120
    while not (gates / "inside").exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (gates / "inside").exists(), outcome
    # The other writer commits while the slow MERGE is open.
    merge_into(spark, frame(spark, fast_rows), LISTS, ref)
    (gates / "go").touch()
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome

    conflicts = [r for r in caplog.records if "concurrent write" in r.getMessage()]
    assert len(conflicts) == 1, [r.getMessage() for r in caplog.records]
    history = DeltaTable.forPath(spark, ref.location).history().orderBy("version").collect()
    assert [h["operation"] for h in history] == ["CREATE TABLE", "MERGE", "MERGE"]
    # Both writers' rows, once each; the slow writer committed last, so its titles win.
    want = slow_rows + [r for r in fast_rows if r[0] not in {s[0] for s in slow_rows}]
    got = spark.read.format("delta").load(ref.location)
    assert_frames_equal(got, frame(spark, want))
