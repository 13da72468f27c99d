"""The MERGE writer against real Delta tables in tmp_path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark import writer
from ometria_spark.delta_table import TableRef, table_version
from ometria_spark.tables import LISTS
from ometria_spark.transforms import ORDER_COLUMN
from ometria_spark.writer import MergeMetrics, SourceCounts, merge_into
from tests.frames import assert_frames_equal

T1 = datetime(2026, 11, 1, tzinfo=UTC)
T2 = datetime(2026, 11, 2, tzinfo=UTC)


def row(list_id: str, title: str, synced: datetime, status: str = "READY") -> tuple[Any, ...]:
    created = datetime(2015, 11, 3, 11, 48, 10, tzinfo=UTC)
    return (list_id, title, None, status, "DYNAMIC", created, None, "acct", "src",
            f"key-{list_id}", synced)  # fmt: skip


def frame(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, LISTS.schema)


def table(spark: SparkSession, path: Path) -> DataFrame:
    return spark.read.format("delta").load(str(path))


def test_merge_into_new_then_changed_then_same(spark: SparkSession, tmp_path: Path) -> None:
    ref = TableRef(str(tmp_path / "lists"), is_path=True)
    first = [row("L1", "VIPs", T1), row("L2", "Lapsed", T1)]

    assert merge_into(spark, frame(spark, first), LISTS, ref) == MergeMetrics(2, 2, 0)
    assert_frames_equal(table(spark, tmp_path / "lists"), frame(spark, first))  # fmt: skip

    # One changed row, one unchanged (only its write time differs), one new.
    second = [row("L1", "VIPs ✨", T2), row("L2", "Lapsed", T2), row("L3", "New", T2)]
    assert merge_into(spark, frame(spark, second), LISTS, ref) == MergeMetrics(2, 1, 1)
    after_second = [row("L1", "VIPs ✨", T2), row("L2", "Lapsed", T1), row("L3", "New", T2)]
    assert_frames_equal(table(spark, tmp_path / "lists"), frame(spark, after_second))  # fmt: skip

    # The same batch again: no row changed and no commit at all (Delta would otherwise
    # rewrite every file holding a matched row, changed or not).
    versions_before = spark.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'lists'}`").count()
    assert merge_into(spark, frame(spark, second), LISTS, ref) == MergeMetrics(0, 0, 0)
    assert_frames_equal(table(spark, tmp_path / "lists"), frame(spark, after_second))  # fmt: skip
    assert spark.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'lists'}`").count() == versions_before

    # One changed row among unchanged ones: only that row's file is rewritten, and the
    # unchanged row is not copied by the MERGE.
    third = [row("L1", "VIPs ✨", T2), row("L2", "Lapsed (old)", T2)]
    assert merge_into(spark, frame(spark, third), LISTS, ref) == MergeMetrics(1, 0, 1)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'lists'}`")
    latest = history.orderBy(F.col("version").desc()).first()
    assert latest is not None
    assert latest["operationMetrics"]["numSourceRows"] == "1"
    assert latest["operationMetrics"]["numTargetRowsUpdated"] == "1"


def test_duplicated_key_latest_fetched_wins(spark: SparkSession, tmp_path: Path) -> None:
    ref = TableRef(str(tmp_path / "lists"), is_path=True)
    batch = frame(
        spark,
        [row("L1", "old title", T1), row("L1", "newest title", T1), row("L1", "middle", T1)],
    ).withColumn(
        ORDER_COLUMN,
        F.when(F.col("list_title") == "old title", 1)
        .when(F.col("list_title") == "middle", 2)
        .otherwise(3),
    )
    assert merge_into(spark, batch, LISTS, ref) == MergeMetrics(1, 1, 0)
    assert_frames_equal(table(spark, tmp_path / "lists"),
                       frame(spark, [row("L1", "newest title", T1)]))  # fmt: skip


def test_managed_table_by_name(spark: SparkSession, tmp_path: Path) -> None:
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS writer_test LOCATION '{tmp_path / 'db'}'")
    ref = TableRef("writer_test.lists", is_path=False)
    merge_into(spark, frame(spark, [row("L9", "Managed", T1)]), LISTS, ref)
    assert_frames_equal(spark.table("writer_test.lists"),
                       frame(spark, [row("L9", "Managed", T1)]))  # fmt: skip
    spark.sql("DROP SCHEMA writer_test CASCADE")


def test_path_table_registered_by_name(spark: SparkSession, tmp_path: Path) -> None:
    ref = TableRef(str(tmp_path / "lists"), is_path=True, catalog_name="writer_reg.lists")
    merge_into(spark, frame(spark, [row("L5", "Named", T1)]), LISTS, ref)
    assert [r["list_id"] for r in spark.table("writer_reg.lists").collect()] == ["L5"]
    spark.sql("DROP SCHEMA writer_reg CASCADE")


def test_existing_table_with_other_columns_fails_loudly(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = str(tmp_path / "lists")
    spark.createDataFrame([("L1",)], "list_id string").write.format("delta").save(path)
    with pytest.raises(ValueError, match=r"lists: columns do not match the spec; missing \["):
        merge_into(spark, frame(spark, [row("L1", "x", T1)]), LISTS, TableRef(path, True))


def test_first_load_is_an_insert_and_an_update_writes_deletion_vectors(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "lists"
    ref = TableRef(str(path), is_path=True)
    first = [row(f"L{i}", "title", T1) for i in range(40)]
    # Several files, so that a rewrite of the one holding L7 would show.
    assert merge_into(spark, frame(spark, first).repartition(4), LISTS, ref) == MergeMetrics(
        40, 40, 0
    )
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    assert detail is not None
    assert detail["properties"]["delta.enableDeletionVectors"] == "true"
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == (
        "__sync_key,created_at,updated_at,__synced_at"
    )
    files_before = detail["numFiles"]
    assert files_before > 1

    second = [row("L7", "new title", T2), row("L99", "new list", T2)]
    assert merge_into(spark, frame(spark, second), LISTS, ref) == MergeMetrics(2, 1, 1)
    want = [row(f"L{i}", "title", T1) for i in range(40) if i != 7] + second
    assert_frames_equal(table(spark, path), frame(spark, want))  # fmt: skip
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert [h["operation"] for h in history] == ["CREATE TABLE", "MERGE", "MERGE"]
    load, update = history[1]["operationMetrics"], history[2]["operationMetrics"]
    # The first load found nothing to match: an insert-only MERGE of every source row.
    assert (load["numSourceRows"], load["numTargetRowsInserted"]) == ("40", "40")
    assert "numTargetRowsUpdated" not in load or load["numTargetRowsUpdated"] == "0"
    # The update marked L7's old row in a deletion vector instead of rewriting its file.
    assert update["numTargetDeletionVectorsAdded"] == "1"
    assert update["numTargetFilesRemoved"] == "0"
    assert update["numTargetRowsCopied"] == "0"


@pytest.mark.parametrize("counted", [False, True], ids=["history", "counts"])
def test_insert_first_falls_back_to_the_upsert_when_rows_matched(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: bool
) -> None:
    """If the table gained rows between the check and the insert, the insert-only MERGE
    skips the matched rows; the upsert that follows updates them, as one MERGE would. The
    insert's shortfall shows in its commit (history), or against the caller's counts."""
    path = tmp_path / "lists"
    ref = TableRef(str(path), is_path=True)
    merge_into(spark, frame(spark, [row("L1", "old", T1), row("L2", "same", T1)]), LISTS, ref)
    monkeypatch.setattr(writer, "_never_written", lambda table: True)
    counts = SourceCounts(rows=3, keys=3) if counted else None
    if counted:  # the counts answer, not the history
        monkeypatch.setattr(writer, "_last_merge_inserted_all", _no_call)
        monkeypatch.setattr(writer, "has_repeated_keys", _no_call)

    batch = [row("L1", "changed", T2), row("L2", "same", T2), row("L3", "new", T2)]
    got = merge_into(spark, frame(spark, batch), LISTS, ref, counts=counts)
    assert got == MergeMetrics(2, 1, 1)
    want = [row("L1", "changed", T2), row("L2", "same", T1), row("L3", "new", T2)]
    assert_frames_equal(table(spark, path), frame(spark, want))  # fmt: skip


def _no_call(*args: Any) -> bool:
    raise AssertionError("not to be called")


def test_a_table_this_ref_created_is_loaded_without_reading_its_history(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first MERGE through the ref that created the table knows it is empty; the next
    one reads the history again, unless the run has read the table's version past 0 (it
    was written since its creation). Repeated keys that the caller counted are
    de-duplicated."""
    path = tmp_path / "lists"
    ref = TableRef(str(path), is_path=True)
    reads: list[str] = []
    monkeypatch.setattr(writer, "_never_written", lambda table: reads.append("history") or False)
    monkeypatch.setattr(writer, "has_repeated_keys", _no_call)
    first = [row("L1", "one", T1), row("L2", "two", T1), row("L1", "one again", T1)]
    source = frame(spark, first).withColumn(ORDER_COLUMN, F.struct(F.monotonically_increasing_id()))
    got = merge_into(spark, source, LISTS, ref, counts=SourceCounts(rows=3, keys=2))
    assert (got, reads) == (MergeMetrics(2, 2, 0), [])
    second = [row("L2", "two, changed", T2), row("L3", "three", T2)]
    got = merge_into(spark, frame(spark, second), LISTS, ref, counts=SourceCounts(rows=2, keys=2))
    assert (got, reads) == (MergeMetrics(2, 1, 1), ["history"])
    assert table_version(spark, ref) is not None and ref.seen.version == 2
    third = [row("L3", "three, changed", T2)]
    got = merge_into(spark, frame(spark, third), LISTS, ref, counts=SourceCounts(rows=1, keys=1))
    assert (got, reads) == (MergeMetrics(1, 0, 1), ["history"])
    want = [row("L1", "one again", T1), second[0], *third]
    assert_frames_equal(table(spark, path), frame(spark, want))  # fmt: skip


def test_records_the_key_makes_one_row_are_counted(spark: SparkSession) -> None:
    """Two campaigns emailing one address in one second: one row (the later fetched), one
    collapsed record counted. Re-reads of one record (the same collision columns) are not
    collisions."""
    from pyspark.sql.types import LongType, StructField, StructType

    from ometria_spark.tables import MEMBER_LISTS

    def change(event: str, email: str, order: int) -> tuple[Any, ...]:
        return ("k-1", "L1", "p1", email, T1, event, "acct", "src", "k-1", T1, order)

    rows = [change("list_enter", "a@x", 0), change("list_exit", "a@x", 1),
            change("list_exit", "a@x", 2), ("k-2", "L1", "p2", None, T1, "list_enter",
            "acct", "src", "k-2", T1, 3), ("k-2", "L1", "p2", None, T1, "list_enter", "acct",
            "src", "k-2", T1, 4)]  # fmt: skip
    schema = StructType([*MEMBER_LISTS.schema.fields, StructField("order", LongType())])
    source = spark.createDataFrame(rows, schema).withColumn(
        ORDER_COLUMN, F.struct(F.col("order").alias("pos"))
    )
    assert writer.collapsed_records(source, MEMBER_LISTS) == 1
    assert writer.collapsed_records(source, LISTS) == 0  # no collision columns: ids are unique
