"""Erasure: after ``erase``, no trace of the erased people is left in any table (the current
version, and every file on disk after its VACUUM, Delta log included), in ``_quarantine`` or
in the raw pages kept, while every other row is unchanged; ``_erasures`` holds hashes only."""

from __future__ import annotations

import dataclasses
import json
import re
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.config import Config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import export_files, write_local
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.erase import ERASURES_SCHEMA, erase, sha256
from ometria_spark.state import StateStore
from ometria_spark.sync import run
from ometria_spark.tables import SYNCED_AT, TABLES
from tests import expected
from tests.frames import assert_rows_equal
from tests.test_sync import ACCOUNT, KEY, SOURCE, make_config

STREAMS = ("lists", "profiles", "member_lists", "unsubscribes", "email_events")


def person_rows(name: str, rows: list[tuple[Any, ...]], ids: set[str], emails: set[str]) -> list:
    """The expected rows of table ``name`` that are not about the erased people."""
    names = [f.name for f in TABLES[name].schema.fields if f.name != SYNCED_AT]

    def about(row: tuple[Any, ...]) -> bool:
        values = dict(zip(names, row, strict=True))
        email = (values.get("email") or "").strip().lower()
        return values.get("profile_id") in ids or (name != "lists" and email in emails)

    return [r for r in rows if not about(r)]


def quarantine_rows(spark: SparkSession, config: Config) -> None:
    """Three bad records: one about the erased person, one about someone whose address
    contains theirs, and one about nobody in particular."""
    rows = [
        ("email_events", "", "bad dt_occurred", "Customer34@EXAMPLE.com,open,not-a-date"),
        ("unsubscribes", "", "bad timestamp", '{"email_address":"xcustomer34@example.com"}'),
        ("lists", "", "not a list", '"just text"'),
    ]
    ddl = "_source string, _source_file string, _problem string, _raw string"
    for batch in (rows[:1], rows[1:]):  # the first alone: its file's statistics are its own
        frame = spark.createDataFrame(batch, ddl)
        StateStore(spark, config).quarantine(frame, stream="unsubscribes", run_id="planted")


def whole(value: str) -> str:
    """A regex for ``value`` as a whole address or id (``xann@x.com`` is not ``ann@x.com``)."""
    return rf"(?i)(^|[^a-z0-9._%+-]){re.escape(value)}($|[^a-z0-9.-])"


def holds_any(frame: DataFrame, values: set[str]) -> Column:
    """True for a row that holds any of ``values`` (any case) in any column."""
    text = F.to_json(F.struct(*frame.columns))
    return reduce(lambda a, b: a | b, [text.rlike(whole(v)) for v in values])


def files_text(root: Path) -> str:
    """The text files under ``root`` (JSON pages, Delta log, CRCs), lower-cased."""
    texts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".crc", ""):
            texts.append(path.read_bytes().decode("utf-8", "replace").lower())
    return "\n".join(texts)


def test_erase_leaves_no_trace_and_every_other_row(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    ds = Dataset.generate(seed=5, profiles=60, lists=2)
    exports = tmp_path / "exports"
    write_local(exports, export_files(ds.email_events, files=2))
    with EmulatorServer(ds, api_key=KEY) as server:
        config = make_config(tmp_path, server)
        config = dataclasses.replace(
            config,
            sync=dataclasses.replace(config.sync, streams=STREAMS),
            exports=dataclasses.replace(config.exports, email_events_path=str(exports)),
        )
        assert run(spark, config).ok
    quarantine_rows(spark, config)

    by_email = next(p for p in ds.profiles if p["email"] == "customer34@example.com")
    by_id = next(p for p in ds.profiles if p["email"] == "customer51@example.com")
    ids = {by_email["id"], by_id["id"]}
    emails = {by_email["email"], by_id["email"]}
    result = erase(spark, config, [" Customer34@Example.COM "], [by_id["id"]])

    # Every table: exactly the rows that are not about them.
    for name, build in {**expected.BUILDERS, "email_events": None}.items():
        spec = TABLES[name]
        rows = (
            expected.email_events(ds.email_events, SOURCE, ACCOUNT)
            if build is None
            else build(ds, SOURCE, ACCOUNT)
        )
        schema = spec.schema
        schema.fields = [f for f in schema.fields if f.name != SYNCED_AT]
        kept = person_rows(name, rows, ids, emails)
        actual = spark.read.format("delta").load(config.table_location(name)).drop(SYNCED_AT)
        assert_rows_equal(actual, kept, schema)
        assert result.rows_removed.get(name, 0) == len(rows) - len(kept), name
        assert name == "lists" or len(kept) < len(rows), name  # there was something to erase
    quarantine = spark.read.format("delta").load(config.table_location("_quarantine"))
    assert sorted(r["raw"] for r in quarantine.collect()) == [
        '"just text"',
        '{"email_address":"xcustomer34@example.com"}',
    ]

    # Files on disk: every Parquet file left under each table (any version), read raw:
    # deletion-vectored rows included.
    tables = tmp_path / "t"
    for folder in sorted(p for p in tables.iterdir() if p.is_dir()):
        files = [str(p) for p in folder.rglob("*.parquet") if "_delta_log" not in p.parts]
        if not files:  # (a table created and never written)
            continue
        physical = spark.read.option("mergeSchema", "true").parquet(*files)
        assert physical.where(holds_any(physical, ids | emails)).count() == 0, folder.name
    # The Delta logs and the raw pages kept, as text.
    for root in (tables, tmp_path / "raw"):
        left = files_text(root)
        assert not [v for v in ids | emails if re.search(whole(v), left)], root

    erasures = spark.read.format("delta").load(config.table_location("_erasures"))
    assert erasures.schema == ERASURES_SCHEMA
    recorded = sorted((r["identifier_kind"], r["identifier_sha256"]) for r in erasures.collect())
    assert recorded == sorted([("email", sha256("customer34@example.com")),
                               ("profile_id", sha256(by_id["id"]))])  # fmt: skip
    assert result.page_records_removed > 0
    assert json.dumps(result.rows_removed)  # counts per table, plain numbers
