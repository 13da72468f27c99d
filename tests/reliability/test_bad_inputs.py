"""The bad-input matrix: malformed records, pages and export files never crash a run, every
bad item lands in ``_quarantine`` (or is counted as a bad value), every good one loads.

Few loads, many cases: one crafted landed pull per API stream (pages written into the
landing zone as an earlier run would have left them, then one ``run()`` against an empty
emulator), and one folder of export files per format (one load each). Every expected table
row, quarantine row and count is written out by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from ometria_spark.client import OmetriaClient
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.exports import EmailEventsResult
from ometria_spark.extract import envelope, land, record_digest
from ometria_spark.landing import Landing, Plan, Request
from ometria_spark.readers import BAD_PAGE
from ometria_spark.state import QUARANTINE_TABLE
from ometria_spark.storage import LocalStorage
from ometria_spark.sync import run
from ometria_spark.tables import (
    ACCOUNT_ID,
    EMAIL_EVENTS,
    LISTS,
    PROFILES,
    SOURCE_ID,
    SYNCED_AT,
    UNSUBSCRIBES,
    TableSpec,
)
from tests import test_exports as ex
from tests.frames import assert_frames_equal
from tests.test_sync import ACCOUNT, KEY, SOURCE, make_config, table

# Unicode of every kind in one value: emoji (outside the BMP), right-to-left scripts, a
# combining mark, the NUL character and CJK.
U = "😀 שלום مرحبا e\u0301 \u0000 漢字"
HUGE = "h" * 1_000_000  # a 1 MB value
SHAPE = "record does not match the expected shape"


def uni(name: str) -> str:
    return f"{name} {U}"


def md5(*parts: str) -> str:
    return hashlib.md5("".join(parts).encode("utf-8")).hexdigest()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


# Every documented timestamp shape (README "Timestamps", transforms.TIMESTAMP_SHAPE) ...
GOOD_TIMES: list[tuple[str, datetime]] = [
    ("2015-11-03T11:48:10+00:00", utc(2015, 11, 3, 11, 48, 10)),  # profiles, lists
    ("2017-05-17 22:08:07+00", utc(2017, 5, 17, 22, 8, 7)),  # unsubscribes
    ("2026-01-01 10:11:12", utc(2026, 1, 1, 10, 11, 12)),  # exports: no offset = UTC
    ("2026-01-01T10:11:12Z", utc(2026, 1, 1, 10, 11, 12)),
    ("2026-01-01T10:11:12.123456Z", utc(2026, 1, 1, 10, 11, 12, 123456)),
    ("2026-01-01T10:11:12.5+01:00", utc(2026, 1, 1, 9, 11, 12, 500000)),
    ("2026-01-01T10:11:12-0800", utc(2026, 1, 1, 18, 11, 12)),
    ("2026-01-01 10:11:12+05", utc(2026, 1, 1, 5, 11, 12)),
    ("2026-01-01", utc(2026, 1, 1)),
    ("2026-01-01t10:11:12z", utc(2026, 1, 1, 10, 11, 12)),
    (" 2026-01-01T10:11:12Z ", utc(2026, 1, 1, 10, 11, 12)),
]
# ... and wrong ones: each becomes NULL and is counted, the row still loads.
BAD_TIMES: list[str | int] = [
    "2026-13-01T00:00:00Z",  # month 13
    "2026-02-30",  # no such day
    "2026-01-01T25:00:00Z",  # hour 25
    "2026-01-01T10:11:12.1234567Z",  # 7 fraction digits
    "2026-1-1",
    "2026-01-01 10:11:12 +00:00",
    "01/02/2026",
    "yesterday",
    1767225600,  # an epoch number
]


def columns(spec: TableSpec) -> list[str]:
    return [c for c in spec.column_names if c != SYNCED_AT]


def schema(spec: TableSpec) -> StructType:
    return StructType([f for f in spec.schema.fields if f.name != SYNCED_AT])


def target_row(
    spec: TableSpec, key: str, source: str, account: str, **values: Any
) -> tuple[Any, ...]:
    """A table row (without ``__synced_at``): the given columns, NULL elsewhere."""
    unknown = set(values) - set(columns(spec))
    assert not unknown, unknown
    row: dict[str, Any] = dict.fromkeys(columns(spec))
    row.update(values)
    row[ACCOUNT_ID], row[SOURCE_ID] = account, source
    for column in spec.columns:
        if column.source.kind == "key":
            row[column.name] = key
    return tuple(row[c] for c in columns(spec))


def assert_rows(actual: DataFrame, spec: TableSpec, rows: list[tuple[Any, ...]]) -> None:
    want = actual.sparkSession.createDataFrame(rows, schema(spec))
    assert_frames_equal(actual.drop(SYNCED_AT), want)


def quarantine_rows(df: DataFrame) -> DataFrame:
    """The quarantine as (stream, source file name, reason, raw)."""
    return df.select(
        "stream",
        F.regexp_extract("source_file", r"[^/]*$", 0).alias("file"),
        "reason",
        "raw",
    )


QUARANTINE_VIEW = "stream string, file string, reason string, raw string"


def compact(value: Any) -> str:
    """A record's JSON text as Spark hands over an element of a JSON array."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- API records: one crafted landed pull per stream ---------------------------------------

P_UNI = {
    "id": "p-" + U,
    **{f: uni(f) for f in ("email", "phone_number", "customer_id", "name", "lastname",
                           "firstname", "gender", "country", "marketing_optin", "timezone",
                           "lifecycle_status")},
    "properties": {f: uni(f) for f in ("zip", "city", "address1", "address2", "province",
                                       "shopify_tags")},
    "dates": {"account_created": "2015-11-03T11:48:10+00:00",
              "marketing_optin": "2017-05-17 22:08:07+00",
              "marketing_optout": "2026-01-01 10:11:12"},
    "update_since": "2026-11-20T10:00:00+00:00",
    "date_of_birth": "1990-05-17",
    "seen": True,
    "is_email_valid": False,
}  # fmt: skip
# Wrong JSON types: numbers, booleans, objects and arrays where strings belong, text where
# booleans belong.
P_NUMBERS = {"id": 12345, "phone_number": 447700900123, "customer_id": 42, "seen": 1,
             "is_email_valid": 0, "marketing_optin": True, "date_of_birth": 19900517}  # fmt: skip
P_OBJECTS = {"id": "p-objects", "name": {"first": "Ana", "last": "B"}, "gender": ["f", "x"],
             "lifecycle_status": False, "properties": {"zip": {"code": 1}},
             "seen": {"x": 1}, "is_email_valid": "maybe"}  # fmt: skip
P_TEXT_BOOLS = {"id": "p-text-bools", "seen": "YES", "is_email_valid": " False "}
P_HUGE = {"id": "p-huge", "name": HUGE, "properties": {"shopify_tags": HUGE}}
P_TIMES = [
    {"id": f"p-ts-{i:02d}", "dates": {"account_created": text}}
    for i, text in enumerate([t for t, _ in GOOD_TIMES] + BAD_TIMES)
]
P_DOBS = [
    {"id": "p-dob-0", "date_of_birth": "1990-05-17"},
    {"id": "p-dob-1", "date_of_birth": "1990-05-17T23:30:00-02:00"},  # its UTC date
    {"id": "p-dob-2", "date_of_birth": "17/05/1990"},
    {"id": "p-dob-3", "date_of_birth": "1990-02-30"},
]
P_NEXT_TO_BAD = {"id": "p-next-to-bad", "email": "ok@example.com"}
P_BAD: list[Any] = [
    {"email": "no-id@example.com"},
    {"id": None, "email": "null-id@example.com"},
    {"id": "", "email": "empty-id@example.com"},
    {"id": "   ", "email": "blank-id@example.com"},
    # A part of the wrong shape: these load, the part NULL (a counted bad value).
    {"id": "p-bad-properties", "properties": "a string where an object belongs"},
    {"id": "p-bad-dates", "dates": ["2026-01-01"]},  # an array where an object belongs
    42,
    "a string where a record belongs",
    [1, 2],
]
# Half an emoji, as an API that cuts strings by UTF-16 units sends it: a JSON escape of a
# lone surrogate, which Python's json (and so requests) decodes as is.
HALF_EMOJI = json.loads('"Ana \\ud83d"')
P_HALF = {"id": "p-half-emoji", "name": HALF_EMOJI}


def profile(key_text: str, **values: Any) -> tuple[Any, ...]:
    return target_row(PROFILES, md5(SOURCE, key_text), SOURCE, ACCOUNT, profile_id=key_text,
                      **values)  # fmt: skip


def expected_profiles() -> list[tuple[Any, ...]]:
    text = {"email": "email", "phone_number": "phone_number", "customer_id": "customer_id",
            "customer_name": "name", "last_name": "lastname", "first_name": "firstname",
            "gender": "gender", "country": "country", "marketing_optin": "marketing_optin",
            "timezone": "timezone", "lifecycle_status": "lifecycle_status", "zipcode": "zip",
            "city": "city", "address1": "address1", "address2": "address2", "state": "province",
            "shopify_tags": "shopify_tags"}  # fmt: skip
    times = [want for _, want in GOOD_TIMES] + [None] * len(BAD_TIMES)
    return [
        profile(
            "p-" + U, **{column: uni(raw) for column, raw in text.items()},
            account_created_date=utc(2015, 11, 3, 11, 48, 10),
            marketing_optin_date=utc(2017, 5, 17, 22, 8, 7),
            marketing_optout_date=utc(2026, 1, 1, 10, 11, 12),
            updated_at=utc(2026, 11, 20, 10), date_of_birth=date(1990, 5, 17), seen=True,
            is_email_valid=False,
        ),
        profile("12345", phone_number="447700900123", customer_id="42", seen=True,
                is_email_valid=False, marketing_optin="true"),
        profile("p-objects", customer_name='{"first":"Ana","last":"B"}', gender='["f","x"]',
                lifecycle_status="false", zipcode='{"code":1}'),
        profile("p-text-bools", seen=True, is_email_valid=False),
        profile("p-huge", customer_name=HUGE, shopify_tags=HUGE),
        *[profile(f"p-ts-{i:02d}", account_created_date=want) for i, want in enumerate(times)],
        profile("p-dob-0", date_of_birth=date(1990, 5, 17)),
        profile("p-dob-1", date_of_birth=date(1990, 5, 18)),
        profile("p-dob-2"),
        profile("p-dob-3"),
        profile("p-next-to-bad", email="ok@example.com"),
        # A part of the wrong shape: the row loads, the part NULL (and counted).
        profile("p-bad-properties"),
        profile("p-bad-dates"),
        # The lone surrogate cannot be UTF-8: Spark's string conversion makes it "?".
        profile("p-half-emoji", customer_name="Ana ?"),
    ]  # fmt: skip


L_UNI = {"id": "l-" + U, **{f: uni(f) for f in ("title", "description", "status", "type")},
         "timestamp_created": "2015-11-03T11:48:10+00:00",
         "timestamp_stats_updated": "2017-05-17 22:08:07+00"}  # fmt: skip
L_TYPES = {"id": 7, "title": {"en": "Sale"}, "description": ["a", "b"], "status": True,
           "timestamp_created": "2026-13-01T00:00:00Z",
           "timestamp_stats_updated": 1767225600}  # fmt: skip
L_HUGE = {"id": "l-huge", "description": HUGE}
L_BAD: list[Any] = [{"title": "no id"}, {"id": None, "title": "null id"},
                    {"id": "", "title": "empty id"}]  # fmt: skip


def a_list(key_text: str, **values: Any) -> tuple[Any, ...]:
    return target_row(LISTS, md5(SOURCE, key_text), SOURCE, ACCOUNT, list_id=key_text,
                      **values)  # fmt: skip


def expected_lists() -> list[tuple[Any, ...]]:
    return [
        a_list("l-" + U, list_title=uni("title"), list_description=uni("description"),
               list_status=uni("status"), list_type=uni("type"),
               created_at=utc(2015, 11, 3, 11, 48, 10), updated_at=utc(2017, 5, 17, 22, 8, 7)),
        a_list("7", list_title='{"en":"Sale"}', list_description='["a","b"]', list_status="true"),
        a_list("l-huge", list_description=HUGE),
    ]  # fmt: skip


U_UNI = {"profile_id": "u-" + U, "timestamp": "2026-11-17 22:08:07+00", "type": "x",
         **{f: uni(f) for f in ("email_address", "send_id", "mass_campaign_id",
                                "trigger_campaign_id", "reason", "reason_text")}}  # fmt: skip
U_TYPES = {"profile_id": 12345, "timestamp": "2026-13-17 22:08:07+00", "send_id": {"a": 1},
           "reason": 3}  # fmt: skip
U_EPOCH = {"profile_id": "u-epoch", "timestamp": 1767225600}
U_HUGE = {"profile_id": "u-huge", "timestamp": "2026-11-18T00:00:00Z", "reason_text": HUGE}
# Each lacks a part of its key, but not all of it: loadable (a missing part is "").
U_PARTIAL: list[Any] = [
    {"profile_id": "u-no-timestamp"},
    {"profile_id": None, "timestamp": "2026-11-17 22:08:07+00"},
    {"profile_id": "u-empty-timestamp", "timestamp": ""},
]
U_BAD: list[Any] = [{"email_address": "nokey@example.com"}, {"profile_id": " ", "timestamp": ""}]


def unsubscribe(profile_id: str, timestamp: str, **values: Any) -> tuple[Any, ...]:
    return target_row(UNSUBSCRIBES, md5(SOURCE, profile_id, timestamp), SOURCE, ACCOUNT,
                      profile_id=profile_id, **values)  # fmt: skip


def expected_unsubscribes() -> list[tuple[Any, ...]]:
    text = {"email": "email_address", "send_id": "send_id", "mass_campaign_id":
            "mass_campaign_id", "trigger_campaign_id": "trigger_campaign_id",
            "unsubscribe_reason": "reason", "unsubscribe_reason_text": "reason_text"}  # fmt: skip
    return [
        unsubscribe("u-" + U, "2026-11-17 22:08:07+00", event_at=utc(2026, 11, 17, 22, 8, 7),
                    **{column: uni(raw) for column, raw in text.items()}),
        unsubscribe("12345", "2026-13-17 22:08:07+00", send_id='{"a":1}', unsubscribe_reason="3"),
        unsubscribe("u-epoch", "1767225600"),
        unsubscribe("u-huge", "2026-11-18T00:00:00Z", event_at=utc(2026, 11, 18),
                    unsubscribe_reason_text=HUGE),
        # A missing key part counts as "" (ometria-sources.md, section 3): they load.
        unsubscribe("u-no-timestamp", ""),
        target_row(UNSUBSCRIBES, md5(SOURCE, "", "2026-11-17 22:08:07+00"), SOURCE, ACCOUNT,
                   event_at=utc(2026, 11, 17, 22, 8, 7)),
        unsubscribe("u-empty-timestamp", ""),
    ]  # fmt: skip


def page(plan: Plan, offset: int, records: Any) -> dict[str, Any]:
    return {
        "stream": plan.stream, "run_id": plan.run_id, "page": offset // 100, "offset": offset,
        "fetched_at": "2026-11-30T00:00:00.000000Z",
        "request": {"endpoint": "/" + plan.stream, "params": {"limit": "100",
                                                            "offset": str(offset)}},
        "context": {}, "records": records,
    }  # fmt: skip


def page_text(plan: Plan, offset: int, records: Any) -> str:
    return compact(page(plan, offset, records))


NOT_JSON = '{"stream": "profiles", "records": [{"id"'


def land_crafted_pulls(raw_path: str) -> dict[str, str]:
    """Pulls an earlier run landed but never merged: the whole matrix of pages. Returns
    {page file name: its text} of the pages expected whole in the quarantine."""
    landing = Landing(raw_path, LocalStorage())
    whole: dict[str, str] = {}

    def crafted(stream: str, request: Request) -> tuple[Plan, Path]:
        plan = Plan(stream, "20261130T000000Z-crafted", 100, (request,))
        landing.save_plan(plan)
        landing.mark_request_done(plan, 0)
        return plan, Path(landing.folder(stream, plan.run_id))

    def raw_page(folder: Path, name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        # Read back, bytes that are not UTF-8 come as U+FFFD.
        whole[f"{folder.parent.name}/{name}"] = data.decode("utf-8", "replace")

    plan, folder = crafted("profiles", Request("profiles"))
    # Every record fits: the one-parse path.
    landing.write_page(plan, 0, page(plan, 0, [P_UNI, P_NUMBERS, P_OBJECTS, P_TEXT_BOOLS, P_HUGE]))
    landing.write_page(plan, 0, page(plan, 100, [*P_TIMES, *P_DOBS]))
    # Bad records beside a good one: the per-record path.
    landing.write_page(plan, 0, page(plan, 200, [P_NEXT_TO_BAD, *P_BAD, None]))
    raw_page(folder, "r0000-o000000300.json", NOT_JSON.encode())
    # Bytes that are not UTF-8 (a Latin-1 é) inside a value.
    latin1_page = page_text(plan, 400, [{"id": "p-latin1", "name": "Caf<E9>"}]).encode()
    raw_page(folder, "r0000-o000000400.json", latin1(latin1_page))
    raw_page(folder, "r0000-o000000500.json", b"")  # an empty file
    raw_page(folder, "r0000-o000000600.json", page_text(plan, 600, {"id": "p-in-obj"}).encode())
    raw_page(folder, "r0000-o000000700.json", page_text(plan, 700, "p-in-text").encode())
    raw_page(folder, "r0000-o000000800.json", page_text(plan, 800, None).encode())
    landing.write_page(plan, 0, page(plan, 900, []))  # the empty last page of a pull
    landing.write_page(plan, 0, page(plan, 1000, [P_HALF, {"email": HALF_EMOJI}]))

    plan, folder = crafted("lists", Request("lists", {"mode": "all"}))
    landing.write_page(plan, 0, page(plan, 0, [L_UNI, L_TYPES, L_HUGE, *L_BAD]))
    raw_page(folder, "r0000-o000000100.json", page_text(plan, 100, "not a list").encode())

    plan, folder = crafted(
        "unsubscribes",
        Request("unsubscribes", {"since": "2026-11-01T00:00:00", "before": "2026-11-30T00:00:00"}),
    )
    landing.write_page(
        plan, 0, page(plan, 0, [U_UNI, U_TYPES, U_EPOCH, U_HUGE, *U_PARTIAL, *U_BAD])
    )
    raw_page(folder, "r0000-o000000100.json", NOT_JSON.replace("profiles", "unsub").encode())
    return whole


@pytest.fixture()
def empty_emulator() -> Iterator[EmulatorServer]:
    """An account with no data at all: the run's own pulls find nothing new."""
    dataset = Dataset([], [], {}, [], [], utc(2026, 12, 1), random.Random(0))
    with EmulatorServer(dataset, api_key=KEY) as server:
        yield server


def test_bad_api_records_and_pages(
    spark: SparkSession,
    tmp_path: Path,
    empty_emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = make_config(tmp_path, empty_emulator)
    whole = land_crafted_pulls(config.storage.raw_path)

    report = run(spark, config, streams=("lists", "profiles", "unsubscribes"))

    outcome = {
        r.stream: (r.status, r.error, r.records_read, r.rows_inserted, r.rows_updated,
                   r.quarantined, r.bad_values)
        for r in report.streams
    }  # fmt: skip
    assert outcome == {
        # 6 records: 3 load (2 values do not parse), 3 lack their id; 1 page not a page.
        "lists": ("succeeded", None, 6, 3, 0, 3 + 1, 2),
        # 42 records read: 33 load with 16 values that do not parse (3 of the wrong-type
        # records, 9 bad times, 2 bad birth dates, 2 parts of the wrong shape), 9 are
        # quarantined, and 6 pages.
        "profiles": ("succeeded", None, 42, 33, 0, 9 + 6, 16),
        # 9 records: 7 load (2 with a time that does not parse, 3 with a key part
        # missing), 2 have no key part at all; 1 page.
        "unsubscribes": ("succeeded", None, 9, 7, 0, 2 + 1, 2),
    }

    assert_rows(table(spark, config, "profiles"), PROFILES, expected_profiles())
    assert_rows(table(spark, config, "lists"), LISTS, expected_lists())
    assert_rows(table(spark, config, "unsubscribes"), UNSUBSCRIBES, expected_unsubscribes())

    def bad_page(name: str) -> tuple[str, str, str, str]:
        stream, file = name.split("/")
        return (stream, file, BAD_PAGE, whole[name])

    p0 = "r0000-p000002-o000000200.json"
    quarantine = spark.read.format("delta").load(config.table_location(QUARANTINE_TABLE))
    want = [
        ("profiles", p0, "missing required field 'id'", compact(P_BAD[0])),
        ("profiles", p0, "missing required field 'id'", compact(P_BAD[1])),
        ("profiles", p0, "missing required field 'id'", compact(P_BAD[2])),
        ("profiles", p0, "missing required field 'id'", compact(P_BAD[3])),
        ("profiles", p0, SHAPE, "42"),
        ("profiles", p0, SHAPE, "a string where a record belongs"),
        ("profiles", p0, SHAPE, "[1,2]"),
        ("profiles", p0, "missing required field 'id'", None),  # a null record
        # Spark writes the record's text again, the lone surrogate as an escape.
        ("profiles", "r0000-p000010-o000001000.json", "missing required field 'id'",
         '{"email":"Ana \\uD83D"}'),
        bad_page("profiles/r0000-o000000300.json"),
        bad_page("profiles/r0000-o000000400.json"),  # not UTF-8
        bad_page("profiles/r0000-o000000500.json"),  # an empty file
        bad_page("profiles/r0000-o000000600.json"),
        bad_page("profiles/r0000-o000000700.json"),
        bad_page("profiles/r0000-o000000800.json"),
        *[("lists", "r0000-p000000-o000000000.json", "missing required field 'id'", compact(r))
          for r in L_BAD],
        bad_page("lists/r0000-o000000100.json"),
        *[("unsubscribes", "r0000-p000000-o000000000.json",
           "missing every key field (profile_id, timestamp)", compact(r)) for r in U_BAD],
        bad_page("unsubscribes/r0000-o000000100.json"),
    ]  # fmt: skip
    assert_frames_equal(quarantine_rows(quarantine), spark.createDataFrame(want, QUARANTINE_VIEW))
    assert_no_key(tmp_path)


def assert_no_key(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def profiles_account(records: list[Any]) -> Dataset:
    """An account whose profiles are exactly ``records`` (served as the API sends them)."""
    return Dataset(records, [], {}, [], [], utc(2026, 12, 1), random.Random(0))


def test_half_an_emoji_from_the_api_lands(tmp_path: Path) -> None:
    """A lone surrogate (``"\\ud83d"`` in the response) must not stop the stream: the page
    lands (escaped), and so do the digests."""
    landing = Landing(str(tmp_path / "raw"), LocalStorage())
    plan = Plan("profiles", "20261130T000000Z-half", 100, (Request("profiles"),))
    landing.save_plan(plan)
    records = [P_HALF, {"id": "p-whole", "name": U}]
    with (
        EmulatorServer(profiles_account(records), api_key=KEY) as server,
        OmetriaClient(server.url, KEY, page_size=100) as client,
    ):
        assert land(plan, client, landing) == 1

    (landed,) = Path(landing.folder("profiles", plan.run_id)).glob("r0000-*.json")
    assert json.loads(landed.read_text(encoding="utf-8"))["records"] == records
    digests = landing.digests(plan)
    assert digests == {record_digest(Request("profiles"), r) for r in records}


@pytest.mark.parametrize("damage", [b"", b'{"stream": "profiles", "records": [{"id"'])
def test_a_damaged_last_page_is_fetched_again_on_resume(tmp_path: Path, damage: bytes) -> None:
    """A half-landed pull whose last page was damaged on storage (emptied or cut short, as a
    power loss can leave a file): the resume fetches that page again instead of failing."""
    landing = Landing(str(tmp_path / "raw"), LocalStorage())
    plan = Plan("profiles", "20261130T000000Z-damaged", 2, (Request("profiles"),))
    landing.save_plan(plan)
    records = [{"id": f"p-{i}"} for i in range(5)]
    folder = Path(landing.folder("profiles", plan.run_id))
    with (
        EmulatorServer(profiles_account(records), api_key=KEY) as server,
        OmetriaClient(server.url, KEY, page_size=2) as client,
    ):
        pages = client.profile_pages()
        for sequence in range(2):
            landing.write_page(plan, 0, envelope(plan, plan.requests[0], next(pages), sequence))
        damaged = sorted(folder.glob("r0000-*.json"))[-1]
        assert damaged.name == "r0000-p000001-o000000001.json"
        damaged.write_bytes(damage)

        assert land(plan, client, landing) == 4  # the damaged page again, and three more

    landed = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("r0000-*"))]
    assert [(p["page"], p["offset"]) for p in landed] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    delivered = [r for p in landed for i, r in enumerate(p["records"]) if i not in p["repeats"]]
    assert sorted(delivered, key=lambda r: r["id"]) == records
    assert (folder / "r0000.done").exists()


# --- export files: one folder per format ---------------------------------------------------

EXPORT_TEXT = {"event_id": "event_id", "uuid": "send_id", "to_address": "email",
               "event_type": "event_type", "bounce_class": "bounce_class",
               "reason": "bounce_reason", "device_type": "device_type",
               "geo_country": "geo_country", "geo_region": "geo_region",
               "geo_timezone": "geo_timezone", "target_url": "target_url",
               "campaign_title": "campaign_title", "campaign_type": "campaign_type"}  # fmt: skip
RAW_FIELDS = EMAIL_EVENTS.raw_schema.fieldNames()

E_UNI = {**{raw: uni(raw) for raw in EXPORT_TEXT}, "dt_occurred": "2026-01-01 10:11:12"}
# A NUL first on its line: CSV parsers may take it for a comment marker.
E_NUL_FIRST = {"event_id": "\u0000first", "to_address": "nul@example.com", "event_type": "open",
               "dt_occurred": "2026-01-01 10:11:12"}  # fmt: skip
E_TIMES: list[dict[str, Any]] = [
    {"event_id": f"ts-{i:02d}", "to_address": "ts@example.com", "event_type": "open",
     "dt_occurred": text}
    for i, text in enumerate([t for t, _ in GOOD_TIMES] + BAD_TIMES)
]  # fmt: skip
E_HUGE = {"event_id": "huge", "to_address": "huge@example.com", "event_type": "send",
          "dt_occurred": "2026-01-03 00:00:00", "campaign_title": HUGE}  # fmt: skip
# A key part missing: "" in the key, and the event loads.
E_PART_KEY = [
    {"event_id": "no-address", "event_type": "open", "dt_occurred": "2026-01-04 00:00:00"},
    {"event_id": "blank-address", "to_address": "   ", "event_type": "open",
     "dt_occurred": "2026-01-04 00:00:00"},
    {"event_id": "no-type", "to_address": "k@example.com", "dt_occurred": "2026-01-04 00:00:00"},
    {"event_id": "no-time", "to_address": "k@example.com", "event_type": "open"},
]  # fmt: skip
# No key part at all: quarantined.
E_NO_KEY = [
    {"event_id": "no-key", "campaign_title": "orphan"},
    {"event_id": "blank-key", "to_address": " ", "dt_occurred": "  "},
]  # fmt: skip
NO_KEY = "missing every key field (to_address, event_type, dt_occurred)"
E_REORDERED = {"dt_occurred": "2026-01-05 00:00:00", "event_type": "click",
               "to_address": "b@example.com", "device_type": "desktop", "uuid": "u-b",
               "event_id": "b-1", "campaign_title": "B", "extra_col": "ignored",
               "target_url": "https://shop.example/b"}  # fmt: skip
E_LATIN1 = {"event_id": "latin1", "to_address": "l@example.com", "event_type": "open",
            "dt_occurred": "2026-01-06 00:00:00", "campaign_title": "Caf<E9>"}  # fmt: skip
E_BOM = {"event_id": "bom", "to_address": "bom@example.com", "event_type": "open",
         "dt_occurred": "2026-01-07 00:00:00"}  # fmt: skip


def event(e: dict[str, Any], event_at: datetime | None, **values: Any) -> tuple[Any, ...]:
    """The row of a good event: its text columns as given, ``values`` overriding; a missing
    key part is "" in the key."""
    parts = ["" if e.get(k) is None else str(e[k]) for k in EMAIL_EVENTS.key_fields]
    key = md5(ex.SOURCE, *parts)
    text = {
        column: str(e[raw]) for raw, column in EXPORT_TEXT.items() if str(e.get(raw) or "").strip()
    }
    return target_row(EMAIL_EVENTS, key, ex.SOURCE, ex.ACCOUNT, event_at=event_at,
                      **{**text, **values})  # fmt: skip


def common_events() -> list[tuple[Any, ...]]:
    """The good events both formats carry (CSV also the Latin-1 one)."""
    times = [want for _, want in GOOD_TIMES] + [None] * len(BAD_TIMES)
    return [
        event(E_UNI, utc(2026, 1, 1, 10, 11, 12)),
        event(E_NUL_FIRST, utc(2026, 1, 1, 10, 11, 12)),
        *[event(e, want) for e, want in zip(E_TIMES, times, strict=True)],
        event(E_HUGE, utc(2026, 1, 3)),
        event(E_REORDERED, utc(2026, 1, 5)),
        event(E_BOM, utc(2026, 1, 7)),
    ]


def part_key_events() -> list[tuple[Any, ...]]:
    """The events with a key part missing: loaded, "" in their key."""
    return [
        event(E_PART_KEY[0], utc(2026, 1, 4)),
        event(E_PART_KEY[1], utc(2026, 1, 4)),
        event(E_PART_KEY[2], utc(2026, 1, 4)),
        event(E_PART_KEY[3], None),
    ]


def fields_json(e: dict[str, Any]) -> str:
    """A parsed record's fields as the quarantine keeps them (``to_json``: NULLs left out)."""
    return compact({k: str(e[k]) for k in RAW_FIELDS if e.get(k) is not None})


def latin1(data: bytes) -> bytes:
    return data.replace(b"<E9>", b"\xe9")


def truncated_jsonl_gzip() -> bytes:
    many = [{"event_id": f"big-{i}", "to_address": f"user{i}@example.com", "event_type": "send",
             "dt_occurred": "2026-01-05 10:00:00",
             "campaign_title": hashlib.sha256(str(i).encode()).hexdigest()}
            for i in range(3_000)]  # fmt: skip
    data = gzip.compress(ex.jsonl_bytes(many))
    return data[: len(data) * 2 // 3]


def stringify(e: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in e.items()}


def assert_quarantine(target: ex.Target, rows: list[tuple[str, str, str | None]]) -> None:
    actual = quarantine_rows(
        target.spark.read.format("delta").load(target.state.quarantine_ref.location)
    ).drop("stream")
    want = target.spark.createDataFrame(rows, "file string, reason string, raw string")
    assert_frames_equal(actual, want)


def assert_loaded(target: ex.Target, files: list[tuple[str, int]]) -> None:
    actual = target.loaded().select(F.regexp_extract("path", r"[^/]*$", 0).alias("file"), "rows")
    want = target.spark.createDataFrame(files, "file string, rows long")
    assert_frames_equal(actual, want)


def test_bad_csv_export_files(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    good = [E_UNI, E_NUL_FIRST, *[stringify(e) for e in E_TIMES], E_HUGE, *E_PART_KEY, *E_NO_KEY]
    too_many = "many,u-m,m@example.com,open,2026-01-04 00:00:00,,,,,,,,T,mass,EXTRA,FIELDS"
    too_few = "few,u-f,f@example.com"
    main = ex.csv_bytes(ex.EXPORT_COLUMNS, good) + f"{too_many}\r\n{too_few}\r\n".encode()
    files = [
        ("2026/01/01/main.csv", main),
        ("2026/01/02/reordered.csv.gz", gzip.compress(ex.csv_bytes([*ex.REORDERED],
                                                                   [E_REORDERED]))),
        ("2026/01/03/empty.csv", b""),
        ("2026/01/04/header_only.csv", ex.csv_bytes(ex.EXPORT_COLUMNS, [])),
        ("2026/01/05/truncated.csv.gz", ex.truncated_gzip()),
        ("2026/01/06/other_header.csv", ex.csv_bytes(
            ["email", "event_type", "dt_occurred"],
            [{"email": "x@example.com", "event_type": "open", "dt_occurred": "2026-01-01"}])),
        ("2026/01/07/latin1.csv", latin1(ex.csv_bytes(ex.EXPORT_COLUMNS, [E_LATIN1]))),
        ("2026/01/08/bom.csv", b"\xef\xbb\xbf" + ex.csv_bytes(ex.EXPORT_COLUMNS, [E_BOM])),
    ]  # fmt: skip
    paths = {Path(name).name: ex.write(root, name, data, i) for i, (name, data) in
             enumerate(files)}  # fmt: skip
    target = ex.Target(spark, tmp_path / "tables")

    result = target.load(str(root), fmt="csv", synced_at=ex.SYNCED_1)

    rejected = dict(result.files_rejected)
    truncated_reason = rejected[f"file:{paths['truncated.csv.gz']}"]
    assert "Unexpected end of input stream" in truncated_reason
    header_reason = ("CSV header lacks required column(s) to_address "
                     "(header: email, event_type, dt_occurred)")  # fmt: skip
    assert rejected == {
        f"file:{paths['truncated.csv.gz']}": truncated_reason,
        f"file:{paths['other_header.csv']}": header_reason,
    }
    main_rows = len(good) + 2
    assert result == EmailEventsResult(
        files_seen=8, files_loaded=6, files_rejected=result.files_rejected,
        rows_read=main_rows + 1 + 0 + 1 + 1,
        inserted=len(common_events()) + 1 + len(E_PART_KEY), updated=0,
        quarantined=len(E_NO_KEY) + 2, bad_values=len(BAD_TIMES), files_new=8,
    )  # fmt: skip
    # Spark's CSV reader decodes before it parses: a byte that is not UTF-8 becomes U+FFFD.
    latin1_event = event(E_LATIN1, utc(2026, 1, 6), campaign_title="Caf\ufffd")
    assert_rows(target.rows(), EMAIL_EVENTS, [*common_events(), latin1_event, *part_key_events()])
    assert_quarantine(
        target,
        [
            *[("main.csv", NO_KEY, fields_json(e)) for e in E_NO_KEY],
            ("main.csv", SHAPE, too_many),
            ("main.csv", SHAPE, too_few),
            ("truncated.csv.gz", truncated_reason, f"file:{paths['truncated.csv.gz']}"),
            ("other_header.csv", header_reason, f"file:{paths['other_header.csv']}"),
        ],
    )  # fmt: skip
    assert_loaded(
        target,
        [("main.csv", main_rows), ("reordered.csv.gz", 1), ("empty.csv", 0),
         ("header_only.csv", 0), ("latin1.csv", 1), ("bom.csv", 1)],
    )  # fmt: skip


def test_bad_json_lines_export_files(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "exports"
    e_types: dict[str, Any] = {"event_id": 7, "uuid": True, "to_address": "types@example.com",
               "event_type": "click", "dt_occurred": "2026-01-02 00:00:00",
               "campaign_title": {"en": "Sale"}, "geo_region": ["a", "b"],
               "device_type": None}  # fmt: skip
    e_number_key: dict[str, Any] = {"event_id": "number-key", "to_address": 123,
                                    "event_type": "open",
                                    "dt_occurred": "2026-01-02 01:00:00"}  # fmt: skip
    e_nulls: list[dict[str, Any]] = [
        {"event_id": "null-type", "to_address": "n@example.com", "event_type": None,
         "dt_occurred": "2026-01-04 00:00:00"},
        {"event_id": "empty-time", "to_address": "n@example.com", "event_type": "open",
         "dt_occurred": ""},
    ]  # fmt: skip
    cut = '{"to_address": "cut@example.com", "event_type"'
    odd_lines = [cut, "42", "[1, 2]", '"just text"', "{}", "", "null"]
    latin1_line = json.dumps(E_LATIN1, ensure_ascii=False).replace("Caf<E9>", "Caf\ufffd")
    main = (
        ex.jsonl_bytes(
            [
                E_UNI,
                E_NUL_FIRST,
                *E_TIMES,
                e_types,
                e_number_key,
                E_HUGE,
                *E_PART_KEY,
                *E_NO_KEY,
                *e_nulls,
                E_LATIN1,
            ]
        )
        + "\n".join(odd_lines).encode()
    )
    main = latin1(main) + b"\n"
    other = [{"id": "p1", "email": "ana@example.com"}, {"id": "p2"}]
    files = [
        ("2026/01/01/main.jsonl", main),
        ("2026/01/02/reordered.jsonl.gz", gzip.compress(ex.jsonl_bytes([E_REORDERED]))),
        ("2026/01/03/empty.jsonl", b""),
        ("2026/01/05/truncated.jsonl.gz", truncated_jsonl_gzip()),
        ("2026/01/06/profiles.jsonl", ex.jsonl_bytes(other)),
        ("2026/01/08/bom.jsonl", b"\xef\xbb\xbf" + ex.jsonl_bytes([E_BOM])),
    ]
    paths = {Path(name).name: ex.write(root, name, data, i) for i, (name, data) in
             enumerate(files)}  # fmt: skip
    target = ex.Target(spark, tmp_path / "tables")

    result = target.load(str(root), fmt="json", synced_at=ex.SYNCED_1)

    rejected = dict(result.files_rejected)
    truncated_reason = rejected[f"file:{paths['truncated.jsonl.gz']}"]
    assert "Unexpected end of input stream" in truncated_reason
    other_reason = (
        "JSON file lacks required column(s) to_address, event_type, dt_occurred in every row"
    )
    assert rejected == {
        f"file:{paths['truncated.jsonl.gz']}": truncated_reason,
        f"file:{paths['profiles.jsonl']}": other_reason,
    }
    good_events = [
        *common_events(),
        event(e_types, utc(2026, 1, 2), event_id="7", send_id="true",
              campaign_title='{"en":"Sale"}', geo_region='["a","b"]'),
        event(e_number_key, utc(2026, 1, 2, 1)),
        *part_key_events(),
        event(e_nulls[0], utc(2026, 1, 4)),
        event(e_nulls[1], None),
    ]  # fmt: skip
    # Lines Spark reads: the records, the Latin-1 one and the odd lines but the blank one.
    main_rows = 2 + len(E_TIMES) + 3 + len(E_PART_KEY) + len(E_NO_KEY) + len(e_nulls) + 1 + 6
    assert_rows(target.rows(), EMAIL_EVENTS, good_events)
    assert_quarantine(
        target,
        [
            *[("main.jsonl", NO_KEY, fields_json(e)) for e in E_NO_KEY],
            # Spark's JSON reader checks the UTF-8 of each line: the line is quarantined.
            ("main.jsonl", SHAPE, latin1_line),
            ("main.jsonl", SHAPE, cut),
            ("main.jsonl", SHAPE, "42"),
            ("main.jsonl", SHAPE, "[1, 2]"),
            ("main.jsonl", SHAPE, '"just text"'),
            ("main.jsonl", SHAPE, "null"),
            ("main.jsonl", NO_KEY, "{}"),
            ("truncated.jsonl.gz", truncated_reason, f"file:{paths['truncated.jsonl.gz']}"),
            ("profiles.jsonl", other_reason, f"file:{paths['profiles.jsonl']}"),
        ],
    )  # fmt: skip
    assert_loaded(
        target,
        [("main.jsonl", main_rows), ("reordered.jsonl.gz", 1), ("empty.jsonl", 0),
         ("bom.jsonl", 1)],
    )  # fmt: skip
    assert result == EmailEventsResult(
        files_seen=6, files_loaded=4, files_rejected=result.files_rejected,
        rows_read=main_rows + 1 + 0 + 1, inserted=len(good_events), updated=0,
        quarantined=len(E_NO_KEY) + 1 + 6, bad_values=len(BAD_TIMES), files_new=6,
    )  # fmt: skip


def test_only_empty_export_files_are_recorded_and_not_read_again(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A 0-byte file holds no event to lose: it is recorded as loaded with 0 rows (a stream
    that failed on it would fail every run until someone deleted it)."""
    root = tmp_path / "exports"
    ex.write(root, "2026/01/01/empty.csv", b"", 0)
    ex.write(root, "2026/01/01/empty.csv.gz", gzip.compress(b""), 1)
    target = ex.Target(spark, tmp_path / "tables")

    first = target.load(str(root), fmt="csv", synced_at=ex.SYNCED_1)
    assert (first.files_new, first.files_loaded, first.files_rejected) == (2, 2, [])
    assert_loaded(target, [("empty.csv", 0), ("empty.csv.gz", 0)])
    again = target.load(str(root), fmt="csv", synced_at=ex.SYNCED_1)
    assert (again.files_new, again.files_loaded) == (0, 0)
