"""Whole-table comparisons, as chispa's ``assert_df_equality(..., ignore_row_order=True,
ignore_nullable=True)`` makes them, with less Spark work.

chispa orders both sides with a Spark sort over every column before it collects them: two
sort jobs, and a Python -> JVM -> Python round trip of the expected rows, for tables of a
few hundred rows (about 0.6 s a table in the tests' session, measured; these helpers take
about a third of that). Here the actual table is collected once, the expected rows are
typed as Spark types them (the same ``StructType`` conversions ``createDataFrame`` and
``collect`` use), both sides are put in one order in Python, and chispa compares the
schemas (nullability aside) and then every row, with its usual diff on a mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chispa.rows_comparer import assert_basic_rows_equality
from chispa.schema_comparer import assert_schema_equality
from pyspark.sql import DataFrame, Row
from pyspark.sql.types import DataType, StructType, _make_type_verifier


def _order(value: Any) -> tuple[Any, ...]:
    """A total order over collected values (None, rows, lists, maps, scalars), the same
    for equal values: maps by their sorted items, not by the order they were built in."""
    if value is None:
        return (0,)
    if isinstance(value, tuple | list):  # Row is a tuple
        return (1, tuple(_order(v) for v in value))
    if isinstance(value, dict):
        return (2, tuple(sorted((_order(k), _order(v)) for k, v in value.items())))
    return (3, type(value).__name__, repr(value))


def _sorted(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=_order)


def typed_rows(rows: Iterable[Any], schema: StructType) -> list[Row]:
    """``rows`` (tuples in the schema's order, dicts or Rows) as ``createDataFrame(rows,
    schema).collect()`` gives them back: checked against the schema (a value of the wrong
    type raises, as there), then converted to Spark's representation and back."""
    verify = _make_type_verifier(schema)
    out = []
    for row in rows:
        verify(row)
        out.append(schema.fromInternal(schema.toInternal(row)))
    return out


def assert_rows_equal(
    actual: DataFrame, rows: Iterable[Any], schema: StructType | str
) -> list[Row]:
    """``actual`` has ``schema`` (nullability aside) and holds exactly ``rows``, in any
    order (a multiset: a row twice must be there twice). Returns the collected rows."""
    if isinstance(schema, str):
        schema = DataType.fromDDL(schema)
        assert isinstance(schema, StructType)
    assert_schema_equality(actual.schema, schema, ignore_nullable=True)
    got = actual.collect()
    assert_basic_rows_equality(_sorted(got), _sorted(typed_rows(rows, schema)))
    return got


def assert_frames_equal(actual: DataFrame, expected: DataFrame) -> None:
    """Two DataFrames with the same schema (nullability aside) and the same rows, in any
    order."""
    assert_schema_equality(actual.schema, expected.schema, ignore_nullable=True)
    assert_basic_rows_equality(_sorted(actual.collect()), _sorted(expected.collect()))
