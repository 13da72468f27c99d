"""``spark.local_frame``: the driver's rows as a DataFrame, the same rows and types as
``createDataFrame`` gives, without a Python worker for a few rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from ometria_spark import spark as spark_module
from ometria_spark.spark import local_frame, string_schema
from tests.frames import assert_rows_equal

SCHEMA = StructType(
    [
        StructField("text", StringType()),
        StructField("count", LongType()),
        StructField("at", TimestampType()),
        StructField("removed", MapType(StringType(), LongType())),
    ]
)
KOLKATA = timezone(timedelta(hours=5, minutes=30))
ROWS = [
    ("plain", 1, datetime(2025, 12, 31, 23, 59, 59, 123456, tzinfo=UTC), {"profiles": 2}),
    ("Ünïcödé, \"quoted\" 'single' \\ back\nline", -(2**62), None, {}),
    (None, None, datetime(2026, 1, 1, 5, 30, tzinfo=KOLKATA), {"a": 1, "b": None}),
    ("", 0, datetime(1970, 1, 1, tzinfo=UTC), None),
]


def test_literal_rows_equal_create_dataframe_rows(spark: SparkSession) -> None:
    """Strings of any character, longs, instants in any offset, maps (empty, with a NULL
    value, NULL), NULLs: what ``createDataFrame`` gives, compared whole."""
    frame = local_frame(spark, ROWS, SCHEMA)
    assert "LogicalRDD" not in frame._jdf.queryExecution().analyzed().toString()
    assert_rows_equal(frame, spark.createDataFrame(ROWS, SCHEMA).collect(), SCHEMA)
    assert_rows_equal(frame, ROWS, SCHEMA)


def test_no_rows_and_many_rows(spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """No row: an empty frame of the schema. More than ``LITERAL_ROWS``: createDataFrame,
    the same rows."""
    names = string_schema("a", "b")
    empty = local_frame(spark, [], names)
    assert_rows_equal(empty, [], names)
    monkeypatch.setattr(spark_module, "LITERAL_ROWS", 2)
    many = local_frame(spark, ROWS, SCHEMA)
    assert "LogicalRDD" in many._jdf.queryExecution().analyzed().toString()
    assert_rows_equal(many, ROWS, SCHEMA)
