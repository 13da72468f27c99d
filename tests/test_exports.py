"""Email-event export files -> the email_events Delta table, each file exactly once.

Export files are written here with the csv/json/gzip modules into nested date folders;
every expected row is written out by hand, keys computed with hashlib.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.config import Config, ExportsConfig, StorageConfig
from ometria_spark.delta_table import TableRef
from ometria_spark.emulator.exports import EXPORT_COLUMNS, csv_bytes, jsonl_bytes
from ometria_spark.exports import (
    EmailEventsResult,
    ExportFile,
    discover,
    event_time_prune,
    load_email_events,
)
from ometria_spark.state import StateStore
from ometria_spark.tables import EMAIL_EVENTS
from tests.frames import assert_frames_equal

SOURCE = "ometria-src-1"
ACCOUNT = "acct-42"
SYNCED_1 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
SYNCED_2 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SYNCED_3 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
MTIME_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC; later files get later times

# File B: another column order, some optional columns omitted, one unknown column.
REORDERED = [
    "dt_occurred", "event_type", "to_address", "device_type", "uuid", "event_id",
    "campaign_title", "extra_col", "target_url",
]  # fmt: skip

TITLE = 'Sale, 50% "off"\nnow'
ZOE_TITLE = 'Ünïcödé 🎉, "quoted"'

FILE_A = [
    {"event_id": "ev1", "uuid": "u-1", "to_address": "ana@example.com", "event_type": "send",
     "dt_occurred": "2026-01-01 10:11:12", "campaign_title": TITLE, "campaign_type": "mass"},
    {"event_id": "ev2", "uuid": "u-1", "to_address": "ana@example.com", "event_type": "click",
     "dt_occurred": "2026-01-01 11:00:00", "device_type": "mobile", "geo_country": "FR",
     "geo_region": "Île-de-France", "geo_timezone": "Europe/Paris",
     "target_url": "https://shop.example/p?a=1,b=2", "campaign_title": TITLE,
     "campaign_type": "mass"},
    {"event_id": "ev3", "uuid": "u-2", "to_address": "bo@example.com", "event_type": "open",
     "dt_occurred": "2026-01-01 12:00:00", "device_type": "mobile", "geo_country": "GB",
     "campaign_title": "Winter", "campaign_type": "trigger"},
    # dt_occurred does not parse: event_at NULL, counted as a bad value, row kept.
    {"event_id": "ev4", "uuid": "u-2", "to_address": "bo@example.com", "event_type": "bounce",
     "dt_occurred": "01/01/2026", "bounce_class": "hard", "reason": "mailbox full",
     "campaign_title": "Winter", "campaign_type": "trigger"},
]  # fmt: skip
FILE_B = [
    # The same event as ev3 of file A: this later file's copy wins.
    {"dt_occurred": "2026-01-01 12:00:00", "event_type": "open", "to_address": "bo@example.com",
     "device_type": "desktop", "uuid": "u-2", "event_id": "ev3-again",
     "campaign_title": "Winter", "extra_col": "ignored"},
    {"dt_occurred": "2026-01-02T09:30:00+01:00", "event_type": "click",
     "to_address": "zoë@example.com", "device_type": "tablet", "uuid": "u-3", "event_id": "ev5",
     "campaign_title": ZOE_TITLE, "extra_col": "x", "target_url": 'https://shop.example/ü?q="1"'},
]  # fmt: skip
FILE_C = [
    # Re-sent events: one with a parseable time, one whose time does not parse.
    {"event_id": "ev1-fixed", "uuid": "u-1", "to_address": "ana@example.com",
     "event_type": "send", "dt_occurred": "2026-01-01 10:11:12", "device_type": "desktop",
     "campaign_title": TITLE, "campaign_type": "mass"},
    {"event_id": "ev4", "uuid": "u-2", "to_address": "bo@example.com", "event_type": "bounce",
     "dt_occurred": "01/01/2026", "bounce_class": "hard", "reason": "mailbox full, retry",
     "campaign_title": "Winter", "campaign_type": "trigger"},
    {"event_id": "ev6", "uuid": "u-4", "to_address": "cy@example.com", "event_type": "open",
     "dt_occurred": "2026-01-03 08:00:00"},
]  # fmt: skip

PATH_A = "2026/01/01/email_events_0.csv.gz"
PATH_B = "2026/01/02/email_events_0.csv"
PATH_C = "2026/01/03/email_events_0.csv.gz"


# --- writing export files ---------------------------------------------------------------


def export_files(fmt: str) -> list[tuple[str, bytes]]:
    """Files A and B as (relative path, bytes): A gzip-compressed, B plain."""
    if fmt == "json":
        return [
            (PATH_A.replace(".csv", ".jsonl"), gzip.compress(jsonl_bytes(FILE_A), mtime=0)),
            (PATH_B.replace(".csv", ".jsonl"), jsonl_bytes(FILE_B)),
        ]
    return [
        (PATH_A, gzip.compress(csv_bytes(EXPORT_COLUMNS, FILE_A), mtime=0)),
        (PATH_B, csv_bytes(REORDERED, FILE_B)),
    ]


def write(root: Path, name: str, data: bytes, order: int) -> Path:
    """Write one file; ``order`` sets its modification time (a later file: a higher order)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    mtime_ns = (MTIME_MS + order * 3_600_000) * 1_000_000
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


# --- expected rows ----------------------------------------------------------------------


def md5(*parts: str) -> str:
    return hashlib.md5("".join(parts).encode("utf-8")).hexdigest()


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def row(
    email: str, event_type: str, dt_occurred: str, event_at: datetime | None,
    event_id: str, send_id: str, bounce_class: str | None, bounce_reason: str | None,
    device_type: str | None, geo_country: str | None, geo_region: str | None,
    geo_timezone: str | None, target_url: str | None, campaign_title: str | None,
    campaign_type: str | None, synced_at: datetime,
) -> tuple[Any, ...]:  # fmt: skip
    key = md5(SOURCE, email, event_type, dt_occurred)
    return (key, event_id, send_id, email or None, event_type, event_at, bounce_class,
            bounce_reason, device_type, geo_country, geo_region, geo_timezone, target_url,
            campaign_title, campaign_type, ACCOUNT, SOURCE, key, synced_at)  # fmt: skip


def rows_after_a_and_b(synced: datetime) -> list[tuple[Any, ...]]:
    return [
        row("ana@example.com", "send", "2026-01-01 10:11:12", ts(2026, 1, 1, 10, 11, 12),
            "ev1", "u-1", None, None, None, None, None, None, None, TITLE, "mass", synced),
        row("ana@example.com", "click", "2026-01-01 11:00:00", ts(2026, 1, 1, 11, 0, 0),
            "ev2", "u-1", None, None, "mobile", "FR", "Île-de-France", "Europe/Paris",
            "https://shop.example/p?a=1,b=2", TITLE, "mass", synced),
        row("bo@example.com", "open", "2026-01-01 12:00:00", ts(2026, 1, 1, 12, 0, 0),
            "ev3-again", "u-2", None, None, "desktop", None, None, None, None, "Winter", None,
            synced),
        row("bo@example.com", "bounce", "01/01/2026", None,
            "ev4", "u-2", "hard", "mailbox full", None, None, None, None, None, "Winter",
            "trigger", synced),
        row("zoë@example.com", "click", "2026-01-02T09:30:00+01:00", ts(2026, 1, 2, 8, 30, 0),
            "ev5", "u-3", None, None, "tablet", None, None, None, 'https://shop.example/ü?q="1"',
            ZOE_TITLE, None, synced),
    ]  # fmt: skip


def rows_after_c() -> list[tuple[Any, ...]]:
    first = rows_after_a_and_b(SYNCED_1)
    return [
        row("ana@example.com", "send", "2026-01-01 10:11:12", ts(2026, 1, 1, 10, 11, 12),
            "ev1-fixed", "u-1", None, None, "desktop", None, None, None, None, TITLE, "mass",
            SYNCED_3),
        first[1],
        first[2],
        row("bo@example.com", "bounce", "01/01/2026", None,
            "ev4", "u-2", "hard", "mailbox full, retry", None, None, None, None, None, "Winter",
            "trigger", SYNCED_3),
        first[4],
        row("cy@example.com", "open", "2026-01-03 08:00:00", ts(2026, 1, 3, 8, 0, 0),
            "ev6", "u-4", None, None, None, None, None, None, None, None, None, SYNCED_3),
    ]  # fmt: skip


# --- running a load -----------------------------------------------------------------------


class Target:
    """The tables of one test: email_events, _loaded_files and the state store."""

    def __init__(self, spark: SparkSession, base: Path, full_listing_hours: float = 0) -> None:
        self.spark = spark
        self.base = base
        self.table = TableRef(str(base / "email_events"), is_path=True)
        self.loaded_files = TableRef(str(base / "_loaded_files"), is_path=True)
        config = Config(
            account_id=ACCOUNT,
            source_id=SOURCE,
            storage=StorageConfig(raw_path=str(base / "raw"), tables_path=str(base)),
            exports=ExportsConfig(full_listing_hours=full_listing_hours),
        )
        self.state = StateStore(spark, config)

    def load(
        self, root: str, *, fmt: str = "csv", synced_at: datetime, full_refresh: bool = False
    ) -> EmailEventsResult:
        return load_email_events(
            self.spark,
            root=root,
            fmt=fmt,
            full_refresh=full_refresh,
            table=self.table,
            loaded_files=self.loaded_files,
            state=self.state,
            source_id=SOURCE,
            account_id=ACCOUNT,
            run_id=f"run-{synced_at:%d}",
            synced_at=synced_at,
        )

    def rows(self) -> DataFrame:
        return self.spark.read.format("delta").load(self.table.location)

    def loaded(self) -> DataFrame:
        return (
            self.spark.read.format("delta")
            .load(self.loaded_files.location)
            .select("path", "size", "modified_ms", "run_id", "rows")
        )

    def quarantine(self) -> DataFrame:
        return (
            self.spark.read.format("delta")
            .load(self.state.quarantine_ref.location)
            .select("source_file", "reason", "raw")
        )


def events(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, EMAIL_EVENTS.schema)


def assert_same(actual: DataFrame, expected: DataFrame) -> None:
    assert_frames_equal(actual, expected)


def loaded_row(path: Path, run_id: str, rows: int) -> tuple[Any, ...]:
    stat = path.stat()
    return (f"file:{path}", stat.st_size, stat.st_mtime_ns // 1_000_000, run_id, rows)


LOADED_SCHEMA = "path string, size long, modified_ms long, run_id string, rows long"


# --- tests --------------------------------------------------------------------------------


@pytest.mark.usefixtures("product_codegen")  # generated code stays covered
def test_load_once_then_increment_then_full_refresh(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    paths = [
        write(root, name, data, order) for order, (name, data) in enumerate(export_files("csv"))
    ]
    target = Target(spark, tmp_path / "tables")

    first = target.load(str(root), synced_at=SYNCED_1)
    # ev3 and ev3-again share a key but not their event id: one collapsed record, counted.
    assert first == EmailEventsResult(
        files_seen=2, files_loaded=2, files_rejected=[], rows_read=6, inserted=5, updated=0,
        quarantined=0, bad_values=1, files_new=2, collapsed=1,
    )  # fmt: skip
    assert_same(target.rows(), events(spark, rows_after_a_and_b(SYNCED_1)))
    assert_same(
        target.loaded(),
        spark.createDataFrame(
            [loaded_row(paths[0], "run-30", 4), loaded_row(paths[1], "run-30", 2)], LOADED_SCHEMA
        ),
    )

    # Nothing new: no file read, nothing merged.
    second = target.load(str(root), synced_at=SYNCED_2)
    assert second == EmailEventsResult(files_seen=2, files_loaded=0, files_new=0)
    assert_same(target.rows(), events(spark, rows_after_a_and_b(SYNCED_1)))

    # A new file lands: only it is read; it updates two events (one whose time does not
    # parse, so its event_at is NULL) and adds one.
    path_c = write(root, PATH_C, gzip.compress(csv_bytes(EXPORT_COLUMNS, FILE_C)), 2)
    third = target.load(str(root), synced_at=SYNCED_3)
    assert third == EmailEventsResult(
        files_seen=3, files_loaded=1, files_rejected=[], rows_read=3, inserted=1, updated=2,
        quarantined=0, bad_values=1, files_new=1,
    )  # fmt: skip
    assert_same(target.rows(), events(spark, rows_after_c()))

    # Full refresh: every file is read again; the later files still win, nothing changes.
    fourth = target.load(str(root), synced_at=SYNCED_3, full_refresh=True)
    assert fourth == EmailEventsResult(
        files_seen=3, files_loaded=3, files_rejected=[], rows_read=9, inserted=0, updated=0,
        quarantined=0, bad_values=2, files_new=3, collapsed=2,
    )  # fmt: skip
    assert_same(target.rows(), events(spark, rows_after_c()))
    assert_same(
        target.loaded(),
        spark.createDataFrame(
            [loaded_row(p, "run-02", n) for p, n in zip([*paths, path_c], [4, 2, 3], strict=True)],
            LOADED_SCHEMA,
        ),
    )


def test_json_lines_variant(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    for order, (name, data) in enumerate(export_files("json")):
        write(root, name, data, order)
    # JSON lines, but not email events: no row has a required column.
    other = [{"id": "p1", "email": "ana@example.com"}, {"id": "p2"}]
    wrong = write(root, "2026/01/03/profiles.jsonl", jsonl_bytes(other), 2)
    target = Target(spark, tmp_path / "tables")

    result = target.load(str(root), fmt="json", synced_at=SYNCED_1)

    reason = "JSON file lacks required column(s) to_address, event_type, dt_occurred in every row"
    assert result == EmailEventsResult(
        files_seen=3, files_loaded=2, files_rejected=[(f"file:{wrong}", reason)], rows_read=6,
        inserted=5, updated=0, quarantined=0, bad_values=1, files_new=3, collapsed=1,
    )  # fmt: skip
    assert_same(target.rows(), events(spark, rows_after_a_and_b(SYNCED_1)))
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in target.loaded().collect()) == [
        "email_events_0.jsonl",
        "email_events_0.jsonl.gz",
    ]


def truncated_gzip() -> bytes:
    """A gzip CSV cut short: its header reads fine, the rest fails at Spark's read."""
    header = EXPORT_COLUMNS
    many = [
        {"event_id": f"big-{i}", "to_address": f"user{i}@example.com", "event_type": "send",
         "dt_occurred": "2026-01-05 10:00:00", "campaign_title": hashlib.sha256(
             str(i).encode()).hexdigest()}
        for i in range(3_000)
    ]  # fmt: skip
    data = gzip.compress(csv_bytes(header, many))
    return data[: len(data) * 2 // 3]


def test_bad_files_and_lines(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    good = write(root, PATH_A, gzip.compress(csv_bytes(EXPORT_COLUMNS, FILE_A)), 0)
    broken_line = (
        csv_bytes(EXPORT_COLUMNS, [])
        + b"ev7,u-7,dee@example.com,open,2026-01-02 10:00:00,,,,,,,,Spring,mass\r\n"
        + b"ev8,u-7,dee@example.com,click,2026-01-02 10:05:00,,,,,,,,Spring,mass,EXTRA,FIELDS\r\n"
        + b"ev9,u-7,,open,2026-01-02 10:09:00,,,,,,,,Spring,mass\r\n"
    )
    lines = write(root, "2026/01/02/lines.csv", broken_line, 1)
    truncated = write(root, "2026/01/05/truncated.csv.gz", truncated_gzip(), 2)
    no_time = [{k: v for k, v in e.items() if k != "dt_occurred"} for e in FILE_A]
    no_header_field = write(
        root,
        "2026/01/06/no_time.csv",
        csv_bytes([c for c in EXPORT_COLUMNS if c != "dt_occurred"], no_time),
        3,
    )
    target = Target(spark, tmp_path / "tables")

    result = target.load(str(root), synced_at=SYNCED_1)

    reasons = dict(result.files_rejected)
    assert sorted(reasons) == [f"file:{truncated}", f"file:{no_header_field}"]
    assert reasons[f"file:{no_header_field}"].startswith(
        "CSV header lacks required column(s) dt_occurred (header: event_id, uuid, to_address"
    )
    assert "Unexpected end of input stream" in reasons[f"file:{truncated}"]
    assert (result.files_seen, result.files_loaded, result.rows_read) == (4, 2, 7)
    # ev9 has no address: "" in its key (a key part), and it loads.
    assert (result.inserted, result.quarantined, result.bad_values) == (6, 1, 1)

    every_good_line = [
        *[r for r in rows_after_a_and_b(SYNCED_1) if r[4] != "click" or r[3] != "zoë@example.com"],
        row("dee@example.com", "open", "2026-01-02 10:00:00", ts(2026, 1, 2, 10, 0, 0),
            "ev7", "u-7", None, None, None, None, None, None, None, "Spring", "mass", SYNCED_1),
        row("", "open", "2026-01-02 10:09:00", ts(2026, 1, 2, 10, 9, 0),
            "ev9", "u-7", None, None, None, None, None, None, None, "Spring", "mass", SYNCED_1),
    ]  # fmt: skip
    # File A alone: its own ev3 (not file B's copy).
    every_good_line[2] = row(
        "bo@example.com", "open", "2026-01-01 12:00:00", ts(2026, 1, 1, 12, 0, 0),
        "ev3", "u-2", None, None, "mobile", "GB", None, None, None, "Winter", "trigger", SYNCED_1,
    )  # fmt: skip
    assert_same(target.rows(), events(spark, every_good_line))

    assert_same(
        target.quarantine(),
        spark.createDataFrame(
            [
                (f"file:{lines}", "record does not match the expected shape",
                 "ev8,u-7,dee@example.com,click,2026-01-02 10:05:00,,,,,,,,Spring,mass,EXTRA,"
                 "FIELDS"),
                (f"file:{truncated}", reasons[f"file:{truncated}"], f"file:{truncated}"),
                (f"file:{no_header_field}", reasons[f"file:{no_header_field}"],
                 f"file:{no_header_field}"),
            ],
            "source_file string, reason string, raw string",
        ),
    )  # fmt: skip
    # Rejected files are not recorded: the next run tries them again, and only them.
    assert_same(
        target.loaded(),
        spark.createDataFrame(
            [loaded_row(good, "run-30", 4), loaded_row(lines, "run-30", 3)], LOADED_SCHEMA
        ),
    )
    again = target.load(str(root), synced_at=SYNCED_2)
    assert (again.files_new, again.files_loaded, sorted(dict(again.files_rejected))) == (
        2, 0, sorted(reasons),
    )  # fmt: skip


def test_discover_skips_hidden_and_needs_root(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    kept = write(root, "2026/01/01/a.csv", b"x\n", 0)
    write(root, "2026/01/01/_SUCCESS", b"", 1)
    write(root, "2026/01/01/.a.csv.crc", b"", 1)
    write(root, "_temporary/0/b.csv", b"x\n", 1)

    assert discover(spark, str(root)) == [ExportFile(f"file:{kept}", 2, MTIME_MS)]
    with pytest.raises(FileNotFoundError, match="export root does not exist"):
        discover(spark, str(tmp_path / "nowhere"))


def test_event_time_prune(spark: SparkSession) -> None:
    target = spark.createDataFrame(
        [(1, ts(2026, 1, 1)), (2, ts(2026, 1, 5)), (3, ts(2026, 2, 1)), (4, None)],
        "id int, event_at timestamp",
    ).alias("t")

    def kept(prune: Any) -> list[int]:
        return sorted(r["id"] for r in target.where(prune).select(F.col("t.id")).collect())

    assert kept(event_time_prune(ts(2026, 1, 1), ts(2026, 1, 5), has_null=False)) == [1, 2]
    assert kept(event_time_prune(ts(2026, 1, 2), ts(2026, 1, 5), has_null=True)) == [2, 4]
    assert kept(event_time_prune(None, None, has_null=True)) == [4]
    assert event_time_prune(None, None, has_null=False) is None


def test_files_from_the_emulator_export_writer(spark: SparkSession, tmp_path: Path) -> None:
    """Nested date folders of gzip CSV as the emulator writes them, plus one event sent
    again in a later file: the table equals rows derived in plain Python."""
    from ometria_spark.emulator.dataset import Dataset
    from ometria_spark.emulator.exports import export_files as emulator_files
    from ometria_spark.emulator.exports import write_local
    from ometria_spark.tables import SYNCED_AT
    from tests import expected

    events = Dataset.generate(seed=2, profiles=150, lists=1).email_events
    root = tmp_path / "exports"
    written = write_local(root, emulator_files(events, files=2))
    assert len({p.parent for p in written}) > 1 and all(p.suffix == ".gz" for p in written)
    # The value kinds the export must carry through: commas, quotes, newlines, unicode.
    titles = {e["campaign_title"] for e in events}
    assert any("," in t for t in titles) and any('"' in t for t in titles)
    assert any("\n" in t for t in titles) and any(not t.isascii() for t in titles)

    resent = {**events[0], "event_id": "resent-later", "device_type": "watch"}
    late = write_local(root / "late", emulator_files([resent], files=1))
    for path in late:  # written after every other file: its copy wins
        os.utime(path, (path.stat().st_mtime + 60, path.stat().st_mtime + 60))

    target = Target(spark, tmp_path / "tables")
    result = target.load(str(root), synced_at=SYNCED_1)
    assert (result.files_loaded, result.files_rejected) == (len(written) + len(late), [])
    schema = EMAIL_EVENTS.schema
    schema.fields = [f for f in schema.fields if f.name != SYNCED_AT]
    want = spark.createDataFrame(expected.email_events([*events, resent], SOURCE, ACCOUNT), schema)
    assert_same(target.rows().drop(SYNCED_AT), want)


def test_a_run_lists_only_the_newest_folder_and_later_ones_between_full_listings(
    spark: SparkSession, tmp_path: Path
) -> None:
    """With ``exports.full_listing_hours`` (date folders), a year of them is not listed every
    hour: after a full listing, a run lists the folder of the newest file and what sorts
    after it. A file landing late in an older folder waits for the next full listing."""
    root = tmp_path / "exports"
    one = [{**FILE_A[0], "event_id": f"ev-{n}"} for n in range(4)]
    data = [csv_bytes(EXPORT_COLUMNS, [e]) for e in one]
    write(root, "2026/01/01/a.csv", data[0], 0)
    write(root, "2026/01/02/b.csv", data[1], 1)
    target = Target(spark, tmp_path / "tables", full_listing_hours=24)
    assert (
        target.load(str(root), synced_at=SYNCED_1).files_seen,
        len(discover(spark, str(root))),
    ) == (2, 2)

    write(root, "2026/01/03/c.csv", data[2], 2)  # a new day's folder
    write(root, "2026/01/01/late.csv", data[3], 3)  # late, in an old folder
    second = target.load(str(root), synced_at=SYNCED_2)
    assert (second.files_seen, second.files_new, second.files_loaded) == (2, 1, 1)  # b, c
    names = sorted(r["path"].rsplit("/", 1)[-1] for r in target.loaded().collect())
    assert names == ["a.csv", "b.csv", "c.csv"]

    full = Target(spark, tmp_path / "tables", full_listing_hours=0)  # a full listing is due
    third = full.load(str(root), synced_at=SYNCED_3)
    assert (third.files_seen, third.files_new, third.files_loaded) == (4, 1, 1)
    names = sorted(r["path"].rsplit("/", 1)[-1] for r in target.loaded().collect())
    assert names == ["a.csv", "b.csv", "c.csv", "late.csv"]
