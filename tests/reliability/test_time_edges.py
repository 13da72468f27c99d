"""Time: the machine's zone changes nothing, and no record at a cursor or a window bound is
skipped or read twice into a table.

The API's bounds (emulated as ``docs/ometria-sources.md`` reads): ``updateSince`` and
``since`` are inclusive (records at or after T), ``before`` is exclusive (records before
T2), so consecutive ``[since, before)`` windows neither overlap nor leave a gap.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from pyspark.sql import SparkSession

from ometria_spark.config import config_from_dict, load_config
from ometria_spark.emulator.dataset import Dataset, unsubscribe_ts
from ometria_spark.emulator.exports import export_files, write_local
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.state import LOADED_FILES_TABLE
from ometria_spark.sync import run
from tests import expected
from tests.frames import assert_frames_equal
from tests.reliability.leaks import assert_no_secret
from tests.reliability.rows import assert_rows, cursors
from tests.test_job import sync, write_config
from tests.test_sync import ACCOUNT, KEY, SOURCE, assert_tables_match
from tests.test_sync import table as read_table

LA = "America/Los_Angeles"
KOLKATA = "Asia/Kolkata"
API = ("lists", "profiles", "member_lists", "unsubscribes")
ALL = (*API, "email_events")


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=19, profiles=250, lists=2), api_key=KEY) as server:
        yield server


def test_the_machine_time_zone_changes_no_row_and_no_cursor(
    spark: SparkSession, tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job under ``TZ=America/Los_Angeles`` (its own process) writes what a sync in
    this process writes (this machine's zone: UTC on CI; Asia/Kolkata stands in for Los
    Angeles on a machine in it)."""
    ds = emulator.dataset
    write_local(tmp_path / "exports", export_files(ds.email_events, files=2))
    configs = {}
    for zone in ("UTC", LA):
        folder = tmp_path / zone.replace("/", "_")
        folder.mkdir()
        path = write_config(folder, emulator)
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
        settings["sync"]["streams"] = list(ALL)
        settings["exports"] = {"email_events_path": str(tmp_path / "exports")}
        path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        configs[zone] = path
    now = datetime.now(UTC)
    away = (
        LA if now.astimezone().utcoffset() != now.astimezone(ZoneInfo(LA)).utcoffset() else KOLKATA
    )
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    # Two warehouses (two landing zones, two locks): both syncs run at once.
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(sync, configs[LA], tz=away)
        here = run(spark, load_config(configs["UTC"]), register_names=False)
        result = other.result()
    assert here.ok, [r.error for r in here.streams]
    assert result.returncode == 0, result.stderr[-2000:]
    assert_no_secret(result.stdout, result.stderr)

    utc, la = (load_config(configs[z]) for z in ("UTC", LA))
    for name in ALL:
        assert_frames_equal(read_table(spark, la, name), read_table(spark, utc, name))  # fmt: skip
    assert_tables_match(spark, utc, ds, API)
    assert_rows(spark, utc, "email_events", expected.email_events(ds.email_events, SOURCE, ACCOUNT))
    assert cursors(spark, la) == cursors(spark, utc)
    assert set(cursors(spark, utc)) == {"profiles", "member_lists", "unsubscribes"}

    def loaded(config_path: Path) -> list[tuple[Any, ...]]:
        config = load_config(config_path)
        df = spark.read.format("delta").load(config.table_location(LOADED_FILES_TABLE))
        return sorted(tuple(r) for r in df.select("path", "size", "modified_ms", "rows").collect())

    assert loaded(configs[LA]) == loaded(configs["UTC"])


def _at(text: str) -> datetime:
    """An unsubscribe's ``2017-05-17 22:08:07+00`` as a UTC datetime."""
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def test_records_at_the_cursor_and_at_window_bounds_are_read_once(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    ds = Dataset.generate(seed=17, profiles=120, lists=2)
    with EmulatorServer(ds, api_key=KEY) as server:
        config = config_from_dict(
            {
                "account_id": ACCOUNT,
                "source_id": SOURCE,
                "api": {"base_url": server.url, "key_env": "OMETRIA_TEST_KEY",
                        "requests_per_second": 200},
                "storage": {"raw_path": str(tmp_path / "raw"),
                            "tables_path": str(tmp_path / "t")},
                "sync": {"streams": ["profiles", "member_lists", "unsubscribes"],
                         "start_date": "2025-10-01", "lookback_minutes": 0},
            }
        )  # fmt: skip
        streams = config.sync.streams
        first = run(spark, config, now=ds.now)
        assert first.ok, [r.error for r in first.streams]
        assert_tables_match(spark, config, ds, streams)
        committed = cursors(spark, config)

        # Records stamped exactly at the committed cursors (arrived after the last pull in
        # the same second), and unsubscribes at the bounds of the next run's windows.
        profile_cursor = max(p["update_since"] for p in ds.profiles)
        unsub_cursor = max(u["timestamp"] for u in ds.unsubscribes)
        assert committed["profiles"] == {"": profile_cursor[:19]}
        assert committed["unsubscribes"] == {"": unsub_cursor[:19].replace(" ", "T")}
        since = _at(unsub_cursor)
        bound, end = since + timedelta(days=1), since + timedelta(days=2)
        list_id = ds.lists[0]["id"]
        list_cursor = max(c["timestamp"] for c in ds.list_changes[list_id])
        with ds.lock:
            i = next(i for i, p in enumerate(ds.profiles) if p["update_since"] < profile_cursor)
            ds.profiles[i] = {**ds.profiles[i], "lifecycle_status": "vip", "seen": True,
                              "update_since": profile_cursor}  # fmt: skip
            template = ds.unsubscribes[0]
            edges = {
                "at-cursor": unsub_cursor,
                "at-bound": unsubscribe_ts(bound.timestamp()),
                "at-end": unsubscribe_ts(end.timestamp()),
            }
            for n, (label, stamp) in enumerate(edges.items()):
                ds.unsubscribes.append({**template, "profile_id": ds.profiles[n]["id"],
                                        "send_id": f"s-{label}", "timestamp": stamp})  # fmt: skip
            ds.unsubscribes.sort(key=lambda u: u["timestamp"])
            ds.list_changes[list_id].append(
                {"profile_id": ds.profiles[-1]["id"], "email": ds.profiles[-1]["email"],
                 "event": "list_exit", "timestamp": list_cursor}
            )  # fmt: skip
            ds.version += 1

        # Windows of one day from the cursor: [since, bound), [bound, end).
        daily = dataclasses.replace(
            config, sync=dataclasses.replace(config.sync, unsubscribes_window_days=1)
        )
        server.reset_log()
        second = run(spark, daily, now=end)
        assert second.ok, [r.error for r in second.streams]
        asked = [
            r.params for r in server.request_log if r.path.endswith(("/profiles", "/unsubscribes"))
        ]
        assert {"updateSince": profile_cursor[:19], "limit": "250", "offset": "0"} in asked
        # (A window's requests: its pages, and a probe after a short page; see PagingFacts.)
        windows = list(dict.fromkeys((p["since"], p.get("before")) for p in asked if "since" in p))
        iso = "%Y-%m-%dT%H:%M:%S"
        # Day windows up to our clock, the last one open-ended (a record stamped after our
        # clock is fetched all the same: the server's clock may run ahead of ours).
        assert windows == [(since.strftime(iso), bound.strftime(iso)), (bound.strftime(iso), None)]
        # Each edge record was fetched exactly once by this run (a page's repeats, the
        # records it re-reads on purpose to check that nothing shifted, left out).
        pages = [
            json.loads(p.read_text(encoding="utf-8"))
            for p in (tmp_path / "raw" / "unsubscribes").glob(f"{second.run_id}*/r*.json")
        ]
        sends = [
            r["send_id"]
            for page in pages
            for i, r in enumerate(page["records"])
            if i not in page["repeats"]
        ]
        assert {s: sends.count(f"s-{s}") for s in edges} == {
            "at-cursor": 1, "at-bound": 1, "at-end": 1,
        }  # fmt: skip
        assert_tables_match(spark, config, ds, ("profiles", "member_lists", "unsubscribes"))

        third = run(spark, daily, now=end + timedelta(hours=1))
        assert third.ok, [r.error for r in third.streams]
        assert_tables_match(spark, config, ds, streams)
