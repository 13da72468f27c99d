"""The tests' table comparison (``tests/frames.py``) fails where chispa's
``assert_df_equality(..., ignore_row_order=True, ignore_nullable=True)`` fails, and passes
where it passes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from chispa.dataframe_comparer import DataFramesNotEqualError, assert_df_equality
from chispa.schema_comparer import SchemasNotEqualError
from pyspark.sql import DataFrame, SparkSession

from tests.frames import assert_frames_equal, assert_rows_equal

SCHEMA = "id string, n long, at timestamp, parts array<string>"
AT = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
ROWS = [("a", 1, AT, ["p", "q"]), ("b", None, None, None), ("b", None, None, None)]


@pytest.fixture(scope="module")
def table(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(list(reversed(ROWS)), SCHEMA)


def both(spark: SparkSession, actual: DataFrame, rows: list[tuple[object, ...]]) -> None:
    """Ours and chispa's on the same input: each passes or fails with the other."""
    want = spark.createDataFrame(rows, SCHEMA)
    try:
        assert_df_equality(actual, want, ignore_row_order=True, ignore_nullable=True)
    except DataFramesNotEqualError:
        with pytest.raises(DataFramesNotEqualError):
            assert_rows_equal(actual, rows, SCHEMA)
        with pytest.raises(DataFramesNotEqualError):
            assert_frames_equal(actual, want)
        return
    assert_rows_equal(actual, rows, SCHEMA)
    assert_frames_equal(actual, want)


def test_equal_tables_pass_in_any_row_order(spark: SparkSession, table: DataFrame) -> None:
    reordered = [ROWS[1], ROWS[0], ROWS[2]]
    assert len(assert_rows_equal(table, reordered, SCHEMA)) == 3
    both(spark, table, reordered)


@pytest.mark.parametrize(
    "rows",
    [
        [ROWS[0], ROWS[1]],  # a duplicate row missing
        [*ROWS, ROWS[0]],  # one row too many
        [("a", 2, AT, ["p", "q"]), *ROWS[1:]],  # a number
        [("a", 1, AT.replace(microsecond=7), ["p", "q"]), *ROWS[1:]],
        [("a", 1, AT, ["q", "p"]), *ROWS[1:]],  # array order counts
        [ROWS[0], ("b", 0, None, None), ROWS[2]],  # 0 is not NULL
    ],
    ids=["missing", "extra", "number", "microsecond", "array-order", "null-vs-0"],
)
def test_any_difference_fails(
    spark: SparkSession, table: DataFrame, rows: list[tuple[object, ...]]
) -> None:
    with pytest.raises(DataFramesNotEqualError):
        assert_rows_equal(table, rows, SCHEMA)
    if len(rows) != len(ROWS):  # (chispa's Spark sorts cost a second or two: two cases)
        both(spark, table, rows)


def test_maps_compare_by_their_entries(spark: SparkSession) -> None:
    """(chispa cannot order rows by a map column: Spark refuses to hash maps.)"""
    schema = "id string, tags map<string,string>"
    table = spark.createDataFrame([("a", {"x": "1", "y": "2"}), ("b", {"y": "2"})], schema)
    assert_rows_equal(table, [("b", {"y": "2"}), ("a", {"y": "2", "x": "1"})], schema)
    with pytest.raises(DataFramesNotEqualError):
        assert_rows_equal(table, [("b", {"y": "2"}), ("a", {"x": "1"})], schema)


def test_a_schema_difference_fails_and_a_wrongly_typed_expected_row_raises(
    table: DataFrame,
) -> None:
    with pytest.raises(SchemasNotEqualError):
        assert_rows_equal(table.select("n", "id", "at", "parts"), ROWS, SCHEMA)
    with pytest.raises(SchemasNotEqualError):
        assert_rows_equal(table.withColumn("n", table["n"].cast("int")), ROWS, SCHEMA)
    with pytest.raises(TypeError):
        assert_rows_equal(table, [("a", "1", AT, None)], SCHEMA)
