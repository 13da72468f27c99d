"""Table checks shared by the reliability tests: whole tables against expected rows."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.state import STATE_TABLE
from ometria_spark.tables import KEY_COLUMN, SYNCED_AT, TABLES
from tests.frames import assert_rows_equal
from tests.test_sync import table as read_table


def assert_rows(
    spark: SparkSession, config: Config, name: str, rows: list[tuple[Any, ...]]
) -> None:
    """The table holds exactly ``rows`` (as ``tests.expected`` builds them), each key once."""
    schema = TABLES[name].schema
    schema.fields = [f for f in schema.fields if f.name != SYNCED_AT]
    got = assert_rows_equal(read_table(spark, config, name), rows, schema)
    keys = [row[KEY_COLUMN] for row in got]
    assert len(set(keys)) == len(keys)


def cursors(spark: SparkSession, config: Config) -> dict[str, dict[str, str]]:
    """The committed cursors, ``{stream: {scope: cursor}}``."""
    state = spark.read.format("delta").load(config.table_location(STATE_TABLE)).collect()
    out: dict[str, dict[str, str]] = {}
    for row in state:
        out.setdefault(row["stream"], {})[row["scope"]] = row["cursor"]
    return out
