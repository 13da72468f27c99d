"""Table upkeep: ``maintain`` compacts and vacuums every table, leaving each one's rows
unchanged and its file count lower; the command prints what it did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from pyspark.sql import SparkSession

from ometria_spark import cli
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.maintain import OWN_TABLES, Upkeep, maintain, summary
from ometria_spark.sync import run
from ometria_spark.tables import TABLES
from tests.frames import assert_frames_equal
from tests.test_sync import API_STREAMS, KEY, make_config


def parquet_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.parquet") if "_delta_log" not in p.parts)


def test_maintain_keeps_every_row_and_lowers_every_file_count(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    with EmulatorServer(Dataset.generate(seed=6, profiles=80, lists=2), api_key=KEY) as server:
        config = make_config(tmp_path, server)
        config = dataclasses.replace(
            config, maintenance=dataclasses.replace(config.maintenance, vacuum_retention_hours=0)
        )
        config = dataclasses.replace(
            config, sync=dataclasses.replace(config.sync, streams=("lists", "profiles"))
        )
        for day in range(2):  # two runs: several small files in every table
            if day:
                server.dataset.advance_day()
            assert run(spark, config).ok
    tables = tmp_path / "t"
    present = [n for n in (*TABLES, *OWN_TABLES) if (tables / n).is_dir()]
    assert set(present) == {"lists", "profiles", "_sync_state", "_sync_runs"}
    before = {n: spark.read.format("delta").load(str(tables / n)).collect() for n in present}
    files = {n: parquet_files(tables / n) for n in present}

    done = maintain(spark, config)

    by_table = {u.table: u for u in done}
    assert [u.table for u in done] == [*TABLES, *OWN_TABLES]
    for name in present:
        after = spark.read.format("delta").load(str(tables / name))
        assert_frames_equal(after, spark.createDataFrame(before[name], after.schema))
        upkeep = by_table[name]
        assert upkeep.status == "done", upkeep
        assert upkeep.files_after < upkeep.files_before or upkeep.files_before == 1, upkeep
        if files[name] > 1:  # (a table written once has nothing to compact or vacuum)
            assert parquet_files(tables / name) < files[name], name
            assert upkeep.vacuumed > 0, upkeep
    assert {u.table for u in done if u.status == "absent"} == {*TABLES, *OWN_TABLES} - set(present)
    assert not [u for u in done if u.error]

    # The command, as `jobs/ometria_sync.py maintain --config FILE` runs it (this session),
    # on a configuration whose tables do not exist yet: each one said absent, exit 0.
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump({
        "account_id": "a", "source_id": "s", "sync": {"streams": list(API_STREAMS)},
        "storage": {"raw_path": str(tmp_path / "raw2"), "tables_path": str(tmp_path / "t2")},
    }), encoding="utf-8")  # fmt: skip
    assert cli.main(["maintain", "--config", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["table", "status", "files", "before", "after", "vacuumed", "s"]
    assert [line.split()[:2] for line in printed[1:]] == [[u.table, "absent"] for u in done]


def test_the_summary_names_each_tables_outcome_and_a_failure_fails_the_command() -> None:
    failed = Upkeep("lists", status="failed", error="AnalysisException: x")
    text = summary([Upkeep("profiles", 12, 1, 11, 2.0), failed])
    assert text.splitlines() == [
        "table          status   files before  after  vacuumed      s",
        "profiles       done               12      1        11    2.0",
        "lists          failed              0      0         0    0.0",
        "  ! lists: AnalysisException: x",
    ]
    assert cli.maintain_status([Upkeep("a"), Upkeep("b", status="absent")]) == 0
    assert cli.maintain_status([Upkeep("a"), Upkeep("b", status="failed")]) == 1


def test_the_commands_parse_and_sync_stays_the_default(tmp_path: Path) -> None:
    assert cli.parse_args(["--config", "c.yaml"]).command == "sync"
    assert cli.parse_args(["sync", "--config", "c.yaml", "--full-refresh"]).full_refresh
    assert cli.parse_args(["maintain", "--config", "c.yaml"]).command == "maintain"
    erase = cli.parse_args(["erase", "--config", "c", "--email", "a@x", "--profile-id", "p1",
                            "--email", "b@x"])  # fmt: skip
    assert (erase.command, erase.email, erase.profile_id) == ("erase", ["a@x", "b@x"], ["p1"])
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(["erase", "--config", "c.yaml"])
    assert stopped.value.code == 2
