"""``_sync_state``: each save is one commit that changes only the given stream's scopes;
every other row keeps its cursor, run id and time, and a later run reads what was saved."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ometria_spark.config import Config, config_from_dict
from ometria_spark.delta_table import retry_on_conflict
from ometria_spark.state import STATE_SCHEMA, STATE_TABLE, StateStore
from tests.frames import assert_rows_equal


def make_config(tmp_path: Path) -> Config:
    return config_from_dict(
        {
            "account_id": "a",
            "source_id": "s",
            "storage": {"raw_path": str(tmp_path / "raw"), "tables_path": str(tmp_path / "t")},
            "sync": {"streams": ["profiles"]},
        }
    )


def test_saving_one_streams_cursors_keeps_every_other_row(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    location = config.table_location(STATE_TABLE)
    first = StateStore(spark, config, register_names=False)
    assert first.cursors("profiles") == {}
    first.set_cursors("profiles", {"": "2026-01-01T00:00:00"}, "run-1")
    first.set_cursors("member_lists", {"L1": "2026-01-02T00:00:00", "L2": "2026-01-03T00:00:00"},
                      "run-1")  # fmt: skip
    first.set_cursors("unsubscribes", {}, "run-1")  # nothing to save: no commit
    before = {
        (r["stream"], r["scope"]): r for r in spark.read.format("delta").load(location).collect()
    }

    later = StateStore(spark, config, register_names=False)  # the next run
    assert later.cursors("member_lists") == {
        "L1": "2026-01-02T00:00:00",
        "L2": "2026-01-03T00:00:00",
    }
    later.set_cursors("member_lists", {"L2": "2026-01-04T00:00:00", "L3": "2026-01-05T00:00:00"},
                      "run-2")  # fmt: skip
    assert later.cursors("member_lists")["L2"] == "2026-01-04T00:00:00"

    table = spark.read.format("delta").load(location)
    got = {(r["stream"], r["scope"]): r for r in table.collect()}
    kept = [before[("profiles", "")], before[("member_lists", "L1")]]
    new = [
        ("member_lists", "L2", "2026-01-04T00:00:00", "run-2", got[("member_lists", "L2")][4]),
        ("member_lists", "L3", "2026-01-05T00:00:00", "run-2", got[("member_lists", "L3")][4]),
    ]
    assert_rows_equal(table, [tuple(r) for r in kept] + new, STATE_SCHEMA)
    assert all(isinstance(row[4], datetime) for row in new)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{location}`").orderBy("version").collect()
    assert [h["operation"] for h in history] == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"]


def test_a_write_that_loses_a_race_is_retried_and_other_errors_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The job's own tables are written again when a concurrent commit (a ``maintain``
    OPTIMIZE) wins the race, as Delta raises it on a classic session or elsewhere."""
    from delta.exceptions.base import ConcurrentAppendException, MetadataChangedException

    raised = [ConcurrentAppendException(message="files were added"),
              MetadataChangedException(message="metadata changed")]  # fmt: skip

    def write() -> str:
        if raised:
            raise raised.pop(0)
        return "committed"

    assert retry_on_conflict("_sync_state", write, attempts=3) == "committed"
    assert [r.getMessage() for r in caplog.records] == [
        "_sync_state: concurrent write (ConcurrentAppendException); retrying",
        "_sync_state: concurrent write (MetadataChangedException); retrying",
    ]
    with pytest.raises(ValueError):
        retry_on_conflict("_sync_state", lambda: int("x"), attempts=3)
    always = ConcurrentAppendException(message="again")

    def lose() -> None:
        raise always

    with pytest.raises(ConcurrentAppendException):
        retry_on_conflict("_sync_state", lose, attempts=2)
