"""Found by the chaos campaign: a profiles pull half landed by a killed run and finished by
the next run a day later must not move the cursor past the changes it never saw.

Profiles are paged in id order, while the cursor is the newest ``update_since`` merged. The
pages landed before the kill hold the profiles of the first offsets as they were then; the
pages landed after the resume hold the later offsets as they are a day later, updates of
that day included. Their newest ``update_since`` is no bound for the profiles of the first
offsets updated meanwhile, so a cursor moved to it skipped those for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ometria_spark.client import OmetriaClient
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.extract import land, make_plan
from ometria_spark.landing import Landing
from ometria_spark.storage import storage_for
from ometria_spark.sync import run
from tests.test_sync import KEY, assert_tables_match, make_config


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=5, profiles=450, lists=1), api_key=KEY) as server:
        yield server


def test_a_pull_resumed_a_day_later_skips_no_change(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)
    ds = emulator.dataset
    landing = Landing(config.storage.raw_path, storage_for(config.storage.raw_path))

    # The first sync's profiles pull, killed after its second page: two pages landed, the
    # request not marked done (what the crash point `extracting:profiles` leaves).
    with OmetriaClient(emulator.url, KEY, page_size=100) as client:
        plan = make_plan(
            "profiles", run_id=f"{datetime.now(UTC) - timedelta(days=1):%Y%m%dT%H%M%SZ}-killed01",
            client=client, page_size=100,
            cursors={}, lookback_minutes=config.sync.lookback_minutes,
            start_date=config.sync.start_date, window_days=30, now=datetime.now(UTC),
        )  # fmt: skip
        landing.save_plan(plan)
        land(plan, client, landing)
    folder = tmp_path / "raw" / "profiles" / plan.run_id
    pages = sorted(folder.glob("r0000-p*.json"))
    assert len(pages) == 5  # 450 profiles, pages of 100
    for page in pages[2:]:
        page.unlink()
    (folder / "r0000.done").unlink()
    (folder / "_digests.json").unlink()

    # The next run comes a day later (a daily schedule, or after an outage): profiles of
    # the first offsets changed meanwhile, and new ones were inserted among them.
    ds.advance_day()
    report = run(spark, config, streams=("profiles",))
    assert report.ok, [r.error for r in report.streams]
    assert (folder / "_merged").exists()  # the resumed pull was merged, then pulled again
    assert_tables_match(spark, config, ds, ("profiles",))

    # And the day after, an ordinary incremental run still gets everything.
    ds.advance_day()
    assert run(spark, config, streams=("profiles",)).ok
    assert_tables_match(spark, config, ds, ("profiles",))
