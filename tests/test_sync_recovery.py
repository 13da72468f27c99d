"""Resume after a failure half way through a pull, and bad input on the way to the tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.landing import Landing, Plan, Request
from ometria_spark.state import QUARANTINE_TABLE, RUNS_TABLE
from ometria_spark.storage import LocalStorage
from ometria_spark.sync import run
from tests.test_sync import KEY, assert_tables_match, make_config


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=3, profiles=600, lists=2), api_key=KEY) as server:
        yield server


class Interrupted(RuntimeError):
    pass


def test_a_pull_stopped_half_way_resumes_after_its_landed_pages(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)

    def stop_after_three(stream: str, pages: int, records: int) -> None:
        if stream == "profiles" and pages == 3:
            raise Interrupted("stopped after 3 pages")

    first = run(spark, config, streams=("profiles",), on_page=stop_after_three)
    (record,) = first.streams
    assert (record.status, record.error) == ("failed", "Interrupted: stopped after 3 pages")
    (pull,) = [p for p in (tmp_path / "raw" / "profiles").iterdir() if p.name[0] != "_"]
    # Pages are named by their number in the request; each after the first starts on the
    # last record of the one before (the pager's anchor).
    assert sorted(p.name for p in pull.glob("r*")) == [
        "r0000-p000000-o000000000.json",
        "r0000-p000001-o000000099.json",
        "r0000-p000002-o000000198.json",
    ]
    assert not (tmp_path / "t" / "profiles").exists()  # nothing merged, no cursor

    emulator.reset_log()
    second = run(spark, config, streams=("profiles",))
    assert second.ok, second.streams
    full_pull_offsets = [
        int(r.params["offset"])
        for r in emulator.request_log
        if r.path.endswith("/profiles") and "updateSince" not in r.params
    ]
    # The resumed request goes on after its 3 landed pages, from their last record (offset
    # 594 holds the last 6 profiles: the end). Its pages came from two runs, so merging it
    # moves no cursor, and the run then pulls from the committed cursor: none yet, a full
    # pull (its rows are unchanged).
    assert full_pull_offsets == [297, 396, 495, 594, 0, 99, 198, 297, 396, 495, 594]
    assert (second.streams[0].rows_inserted, second.streams[0].rows_updated) == (600, 0)
    assert (pull / "_resumed").exists() and (pull / "_merged").exists()
    assert_tables_match(spark, config, emulator.dataset, ("profiles",))

    # The key is in no landed page, table file or run record.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_bad_pages_and_records_are_quarantined_and_the_rest_loads(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, emulator)
    good = {"id": "0000-crafted-000001", "email": "ok@example.com", "date_of_birth": "1990-13-45"}
    # A part of the wrong shape: the row loads with that part NULL (a bad value).
    odd = {"id": "0000-crafted-000002", "properties": "a string where an object belongs"}
    bad_records = [{"email": "no-id@example.com"}, 42]
    # A pull an earlier run landed but did not merge: one page of mixed records, one page
    # that is not JSON at all.
    landing = Landing(config.storage.raw_path, LocalStorage())
    plan = Plan("profiles", "20200101T000000Z-crafted", 100, (Request("profiles"),))
    landing.save_plan(plan)
    page = {
        "stream": "profiles", "run_id": plan.run_id, "page": 0, "offset": 0,
        "fetched_at": "2020-01-01T00:00:00Z",
        "request": {"endpoint": "/profiles", "params": {"limit": "100", "offset": "0"}},
        "context": {}, "records": [good, odd, *bad_records],
    }  # fmt: skip
    landing.write_page(plan, 0, page)
    folder = Path(landing.folder("profiles", plan.run_id))
    (folder / "r0000-o000000100.json").write_text('{"stream": "profiles", "records": [{"id"')
    landing.mark_request_done(plan, 0)

    report = run(spark, config, streams=("profiles",))
    assert report.ok, report.streams
    record = report.streams[0]
    assert (record.quarantined, record.bad_values) == (3, 2)
    assert record.rows_inserted == 602  # the crafted good records + the emulator's 600

    quarantine = spark.read.format("delta").load(config.table_location(QUARANTINE_TABLE))
    rows = sorted(
        (r["reason"], Path(r["source_file"]).name, r["raw"])
        for r in quarantine.select("reason", "source_file", "raw").collect()
    )
    assert rows == [
        ("landed page is not a valid JSON page", "r0000-o000000100.json",
         '{"stream": "profiles", "records": [{"id"'),
        ("missing required field 'id'", "r0000-p000000-o000000000.json",
         json.dumps(bad_records[0], separators=(",", ":"))),
        ("record does not match the expected shape", "r0000-p000000-o000000000.json", "42"),
    ]  # fmt: skip
    profiles = spark.read.format("delta").load(config.table_location("profiles"))
    crafted = profiles.where("profile_id = '0000-crafted-000001'").select(
        "profile_id", "email", "date_of_birth"
    )
    want = spark.createDataFrame(
        [("0000-crafted-000001", "ok@example.com", None)],
        "profile_id string, email string, date_of_birth date",
    )
    assert_df_equality(crafted, want, ignore_nullable=True)
    runs = spark.read.format("delta").load(config.table_location(RUNS_TABLE))
    assert [(r["stream"], r["status"], r["quarantined"]) for r in runs.collect()] == [
        ("profiles", "succeeded", 3)
    ]
