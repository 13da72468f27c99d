"""Landed page files -> record rows: every record once, a bad record alone, a bad page whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ometria_spark.readers import BAD_PAGE, RAW_COLUMN, SOURCE_FILE, read_records
from ometria_spark.tables import MEMBER_LISTS, PROFILES
from ometria_spark.transforms import ORDER_COLUMN, PROBLEM_COLUMN, UNREADABLE_COLUMN
from tests.frames import assert_frames_equal

SHAPE = "record does not match the expected shape"


def page(
    number: int,
    records: list[Any],
    context: dict[str, str] | None = None,
    repeats: list[int] | None = None,
) -> str:
    return json.dumps(
        {
            "stream": "profiles", "run_id": "r1", "page": number, "offset": 250 * number,
            "fetched_at": "2026-11-01T10:00:00.000000Z",
            "server_date": "2026-11-01T10:00:00Z", "repeats": repeats or [],
            "request": {"endpoint": "/profiles", "params": {"updateSince": "2026-10-31T00:00:00"}},
            "context": context or {}, "records": records,
        },
        ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip


def land(tmp_path: Path, pages: list[str]) -> list[str]:
    paths = []
    for number, text in enumerate(pages):
        path = tmp_path / f"r0000-o{number:09d}.json"
        path.write_text(text, encoding="utf-8")
        paths.append(f"file://{path}")
    return paths


def rows(spark: SparkSession, paths: list[str], spec: Any) -> Any:
    df = read_records(spark, paths, spec)
    return df.select(
        "id",
        F.col(ORDER_COLUMN)["page"].alias("page"),
        F.col(ORDER_COLUMN)["pos"].alias("pos"),
        PROBLEM_COLUMN,
        RAW_COLUMN,
        F.regexp_extract(SOURCE_FILE, r"[^/]+$", 0).alias("file"),
        F.array_join(UNREADABLE_COLUMN, ",").alias("unreadable"),
    )


SCHEMA = (
    "id string, page long, pos long, _problem string, _raw string, file string, unreadable string"
)


def test_good_pages_bad_records_and_bad_pages(spark: SparkSession, tmp_path: Path) -> None:
    broken = '{"stream":"profiles","records":[{"id"'
    paths = land(
        tmp_path,
        [
            page(0, [{"id": "a1", "name": "Zoë"}, {"id": "a2", "properties": {"zip": 10115}}]),
            # One loadable record, one of a slightly wrong shape (it loads, its unreadable
            # part NULL), then bad records: the page is read again record by record, so
            # each bad one is quarantined alone with its text.
            page(
                1,
                [
                    {"id": "b1"},
                    {"id": "b2", "properties": "x"},
                    5,
                    {"email": "no-id"},
                    {"id": "b3", "dates": [1], "properties": {"zip": "z"}},
                ],
            ),
            broken,
            page(3, []),  # the empty page that ends a pull: no rows
            # A page that starts on the record the page before ended with (the pager's
            # anchor), unchanged: a repeat, left out.
            page(4, [{"id": "a2", "properties": {"zip": 10115}}, {"id": "c1"}], repeats=[0]),
        ],
    )
    f1, f2 = Path(paths[1]).name, Path(paths[2]).name
    want = spark.createDataFrame(
        [
            ("a1", 0, 0, None, None, None, ""),
            ("a2", 0, 1, None, None, None, ""),
            ("b1", 1, 0, None, None, None, ""),
            ("b2", 1, 1, None, None, None, "properties"),
            (None, 1, 2, SHAPE, "5", f1, ""),
            (None, 1, 3, "missing required field 'id'", '{"email":"no-id"}', f1, ""),
            ("b3", 1, 4, None, None, None, "dates"),
            (None, None, None, BAD_PAGE, broken, f2, ""),
            ("c1", 4, 1, None, None, None, ""),
        ],
        SCHEMA,
    )
    assert_frames_equal(rows(spark, paths, PROFILES), want)  # fmt: skip


def test_list_changes_take_the_list_id_from_the_request(
    spark: SparkSession, tmp_path: Path
) -> None:
    changes = [
        {"profile_id": "p1", "timestamp": "2026-10-31T10:00:00+00:00", "event": "list_enter"},
        {"profile_id": "p2"},  # no timestamp: a key part counts as "", the change loads
        {"email": "x@example.com"},  # no key part of its own: quarantined
    ]
    paths = land(tmp_path, [page(0, changes, context={"list_id": "3001"})])
    want = spark.createDataFrame(
        [
            ("3001", 0, 0, None, None, None, ""),
            ("3001", 0, 1, None, None, None, ""),
            ("3001", 0, 2, "missing every key field (profile_id, timestamp)",
             '{"email":"x@example.com"}', Path(paths[0]).name, ""),
        ],
        SCHEMA,
    )  # fmt: skip
    assert_frames_equal(rows(spark, paths, MEMBER_LISTS), want)  # fmt: skip
