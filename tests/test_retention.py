"""A year of hourly runs: raw-page retention deletes merged pulls only, and a run's storage
requests do not grow with the pulls earlier runs left (the pull index, ``pull_index.py``)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.landing import Landing, Plan, Request
from ometria_spark.pull_index import MERGED_MARKER
from ometria_spark.storage import S3Storage, Storage, storage_for
from ometria_spark.sync import new_run_id, run
from tests.conftest import BUCKET
from tests.test_sync import KEY, assert_tables_match, make_config

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Fail(Exception):
    pass


def fail_at(name: str) -> Any:
    def hook(phase: str) -> None:
        if phase == name:
            raise Fail(f"stopped at {phase}")

    return hook


def pulls(config: Config, stream: str) -> list[str]:
    """The stream's pull folders left in the landing zone, as their run ids' start times."""
    root = Path(config.storage.raw_path) / stream
    return sorted(p.name[:16] for p in root.iterdir() if not p.name.startswith("_"))


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def test_retention_deletes_only_merged_pulls_older_than_the_setting(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    streams = ("lists", "profiles")
    with EmulatorServer(Dataset.generate(seed=4, profiles=30, lists=2), api_key=KEY) as server:
        config = make_config(tmp_path, server)
        config = dataclasses.replace(
            config,
            storage=dataclasses.replace(config.storage, raw_retention_days=2),
            sync=dataclasses.replace(config.sync, streams=streams),
        )
        old, older = T0 - timedelta(days=10), T0 - timedelta(days=9)
        assert run(spark, config, now=old).ok
        # A day later the profiles pull lands (with changes) but is never merged.
        server.dataset.advance_day()
        second = run(spark, config, now=older, on_phase=fail_at("landed:profiles"))
        assert [r.status for r in second.streams] == ["succeeded", "failed"]
        assert pulls(config, "lists") == [stamp(old), stamp(older)]
        assert pulls(config, "profiles") == [stamp(old), stamp(older)]

        # Today: resuming that pull fails again; retention deletes the merged pulls older
        # than two days, and keeps the unmerged one however old.
        server.dataset.advance_day()
        third = run(spark, config, now=T0, on_phase=fail_at("merging:profiles"))
        assert [r.status for r in third.streams] == ["succeeded", "failed"]
        assert pulls(config, "lists") == [stamp(T0)]
        assert pulls(config, "profiles") == [stamp(older)]

        # An hour later the old pull is merged at last, and so deleted as well.
        later = T0 + timedelta(hours=1)
        assert run(spark, config, now=later).ok
        assert pulls(config, "lists") == [stamp(T0), stamp(later)]
        assert pulls(config, "profiles") == [stamp(later)]
        assert_tables_match(spark, config, server.dataset, streams)


class Counting:
    """A storage that counts its calls by method (the storage requests of a run)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def land_history(landing: Landing, stream: str, runs: int, unmerged: int = 1) -> list[Plan]:
    """``runs`` hourly pulls (a plan and one page each), all merged but the last ``unmerged``."""
    plans = []
    assert landing.unmerged_plans(stream) == []  # as every run starts
    for hour in range(runs):
        plan = Plan(stream, new_run_id(T0 + timedelta(hours=hour)), 100, (Request("lists"),))
        landing.save_plan(plan)
        landing.write_page(plan, 0, {"page": 0, "offset": 0, "records": []})
        if hour < runs - unmerged:
            landing.mark_merged(plan)
        plans.append(plan)
    return plans


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_runs_storage_requests_do_not_grow_with_history(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """After 10 or after 300 earlier runs, finding the unmerged pulls and applying retention
    cost the same storage calls (the old scan listed every pull folder)."""
    if where == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        roots = [f"s3://{BUCKET}/raw-{n}" for n in (10, 300)]
        base: Storage = S3Storage(endpoint, "us-east-1")
    else:
        roots = [str(tmp_path / f"raw-{n}") for n in (10, 300)]
        base = storage_for(roots[0])
    costs = []
    for root, runs in zip(roots, (10, 300), strict=True):
        plans = land_history(Landing(root, base), "lists", runs)
        counting = Counting(base)
        landing = Landing(root, counting)  # type: ignore[arg-type]
        assert [p.run_id for p in landing.unmerged_plans("lists")] == [plans[-1].run_id]
        landing.prune(["lists"], T0 - timedelta(days=1), 2)  # nothing is that old
        costs.append(dict(counting.calls))
        assert len(Landing(root, base).index.open_runs("lists")) == 1
    assert costs[0] == costs[1], costs


def test_an_earlier_versions_landing_zone_is_indexed_once(tmp_path: Path) -> None:
    """Pull folders written before the index existed: one scan finds the unmerged one (and
    skips a set-aside one), records the merged ones for retention, and is not repeated."""
    root = str(tmp_path / "raw")
    storage = storage_for(root)
    plans = land_history(Landing(root, storage), "lists", 4, unmerged=2)
    Landing(root, storage).abandon("lists", plans[-2].run_id)
    for index in ("_open", "_done"):  # as an earlier version left it
        storage.remove_tree(f"{root}/lists/{index}")
    storage.delete(f"{root}/lists/_indexed")

    counting = Counting(storage)
    landing = Landing(root, counting)  # type: ignore[arg-type]
    assert [p.run_id for p in landing.unmerged_plans("lists")] == [plans[-1].run_id]
    scans = counting.calls["list_names"]
    assert [p.run_id for p in landing.unmerged_plans("lists")] == [plans[-1].run_id]
    assert counting.calls["list_names"] - scans == 2  # _open/ and the one open folder
    assert sorted(storage.list_names(f"{root}/lists/_done")) == [p.run_id for p in plans[:2]]
    # Retention then deletes the two merged pulls, and only them.
    landing.prune(["lists"], T0 + timedelta(days=30), 7)
    left = [n for n in storage.list_names(f"{root}/lists") if not n.startswith("_")]
    assert left == [p.run_id for p in plans[2:]]
    assert MERGED_MARKER not in storage.list_names(f"{root}/lists/{plans[-1].run_id}")
