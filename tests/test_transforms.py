"""Raw records, as the sources give them, through the transforms of each of the five tables.

Every expected row is written out by hand; keys are computed here with hashlib, independently
of the Spark code under test.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

from chispa import assert_column_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.tables import (
    EMAIL_EVENTS,
    LISTS,
    MEMBER_LISTS,
    PROFILES,
    REQUEST_UPDATE_SINCE,
    UNSUBSCRIBES,
    TableSpec,
)
from ometria_spark.transforms import (
    BAD_VALUES_COLUMN,
    PROBLEM_COLUMN,
    finalize,
    latest_per_key,
    parse_date,
    parse_timestamp,
    split_loadable,
    to_target,
    with_problems,
)
from tests.conftest import raw_records
from tests.frames import assert_frames_equal

SOURCE = "ometria-src-1"
ACCOUNT = "acct-42"
SYNCED = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def md5(*parts: str) -> str:
    return hashlib.md5("".join(parts).encode("utf-8")).hexdigest()


def ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def run(spark: SparkSession, spec: TableSpec, raw: DataFrame) -> tuple[DataFrame, list[Any]]:
    """Transform; return (final rows, [(quarantine reason, raw text)]), also checking
    that the prepared frame keeps the bad-value names for the run report."""
    good, bad = split_loadable(raw.transform(with_problems(spec)))
    prepared = (
        good.transform(to_target(spec, source_id=SOURCE, account_id=ACCOUNT, synced_at=SYNCED))
        .transform(latest_per_key())
        .cache()
    )
    quarantined = sorted((r[PROBLEM_COLUMN], r["_raw"]) for r in bad.collect())
    return prepared, quarantined


def expected(spark: SparkSession, spec: TableSpec, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, spec.schema)


def bad_values(prepared: DataFrame, key_column: str) -> dict[str, list[str]]:
    return {
        r[key_column]: sorted(r[BAD_VALUES_COLUMN])
        for r in prepared.collect()
        if r[BAD_VALUES_COLUMN]
    }


ZOE: dict[str, Any] = {
    "@type": "contact",
    "id": "2695-c473e2-4aaf58",
    "email": "zoe@example.com",
    "phone_number": "+447700900001",
    "customer_id": "C-1",
    "name": "Zoë Brontë",
    "firstname": "Zoë",
    "lastname": "Brontë",
    "middlename": None,
    "gender": "f",
    "country": "GB",
    "marketing_optin": "EXPLICITLY_OPTEDIN",
    "timezone": "Europe/London",
    "date_of_birth": "1990-02-03",
    "seen": True,
    "lifecycle_status": "active",
    "is_email_valid": True,
    "properties": {
        "zip": "N1 9GU",
        "city": "Łódź",
        "address1": '1 "Quoted" St, Flat 2',
        "address2": None,
        "province": "Mazowieckie",
        "shopify_tags": "vip,sale",
        "loyalty_tier": "gold",
    },
    "dates": {
        "account_created": "2015-11-03T11:48:10+00:00",
        "marketing_optin": "2016-01-01T00:00:00+00:00",
        "marketing_optout": None,
    },
    "update_since": "2026-11-01T10:00:00+00:00",
    "tags": ["a", "b"],
    "identities": [{"type": "email", "id": "zoe@example.com"}],
}


def test_profiles(spark: SparkSession) -> None:
    records: list[Any] = [
        ZOE,
        {  # sparse: no properties, no dates, no update_since; bad date and boolean
            "id": "2695-aaaaaa-000002",
            "email": None,
            "name": "東京 太郎 🎌",
            "date_of_birth": "31/02/1990",
            "seen": "maybe",
            "is_email_valid": False,
        },
        {"email": "noid@example.com"},  # no id: quarantined
        # A part of the wrong shape: the row loads, the part is NULL and counted.
        {"id": "2695-bbbbbb-000004", "properties": "not an object", "email": "b@example.com"},
        {**ZOE, "email": "zoe.new@example.com"},  # fetched later: wins over the first
        {  # ids and codes that arrive as JSON numbers keep their text
            "id": "2695-cccccc-000003",
            "customer_id": 40021,
            "properties": {"zip": 10115, "city": "Berlin", "shopify_tags": ["a", "b"]},
            "dates": {"account_created": "2020-02-29T23:59:59.5+01:00"},
            "seen": "TRUE",
        },
    ]
    raw = raw_records(spark, PROFILES, records).withColumn(
        REQUEST_UPDATE_SINCE, F.lit("2026-11-01T09:00:00")
    )
    prepared, quarantined = run(spark, PROFILES, raw)

    zoe_key = md5(SOURCE, "2695-c473e2-4aaf58")
    taro_key = md5(SOURCE, "2695-aaaaaa-000002")
    berlin_key = md5(SOURCE, "2695-cccccc-000003")
    shape_key = md5(SOURCE, "2695-bbbbbb-000004")
    assert zoe_key == hashlib.md5(b"ometria-src-12695-c473e2-4aaf58").hexdigest()
    want = expected(
        spark,
        PROFILES,
        [
            (
                "2695-c473e2-4aaf58", "zoe.new@example.com", "+447700900001", "C-1",
                "Zoë Brontë", "Brontë", "Zoë", "f", "GB", "EXPLICITLY_OPTEDIN",
                "Europe/London", date(1990, 2, 3), True, "active", True, "N1 9GU", "Łódź",
                '1 "Quoted" St, Flat 2', None, "Mazowieckie", "vip,sale",
                ts(2015, 11, 3, 11, 48, 10), ts(2026, 11, 1, 10, 0, 0),
                ts(2016, 1, 1, 0, 0, 0), None,
                ACCOUNT, SOURCE, zoe_key, SYNCED,
            ),
            (
                "2695-aaaaaa-000002", None, None, None, "東京 太郎 🎌", None, None, None,
                None, None, None, None, None, None, False, None, None, None, None, None,
                None, None, ts(2026, 11, 1, 9, 0, 0), None, None,
                ACCOUNT, SOURCE, taro_key, SYNCED,
            ),
            (
                "2695-cccccc-000003", None, None, "40021", None, None, None, None, None, None,
                None, None, True, None, None, "10115", "Berlin", None, None, None, '["a","b"]',
                datetime(2020, 2, 29, 22, 59, 59, 500000, tzinfo=UTC),
                ts(2026, 11, 1, 9, 0, 0), None, None,
                ACCOUNT, SOURCE, berlin_key, SYNCED,
            ),
            (
                "2695-bbbbbb-000004", "b@example.com", None, None, None, None, None, None,
                None, None, None, None, None, None, None, None, None, None, None, None, None,
                None, ts(2026, 11, 1, 9, 0, 0), None, None,
                ACCOUNT, SOURCE, shape_key, SYNCED,
            ),
        ],
    )  # fmt: skip
    assert_frames_equal(prepared.transform(finalize(PROFILES)), want)
    assert quarantined == [("missing required field 'id'", '{"email": "noid@example.com"}')]
    assert bad_values(prepared, "profile_id") == {
        "2695-aaaaaa-000002": ["date_of_birth", "seen"],
        "2695-bbbbbb-000004": ["properties"],
    }


def test_member_lists(spark: SparkSession) -> None:
    enter = {
        "profile_id": "p1",
        "email": "ana@example.com",
        "event": "list_enter",
        "timestamp": "2026-11-01T10:00:00+00:00",
    }
    records: list[Any] = [
        enter,
        {**enter, "event": "list_exit", "timestamp": "2026-11-02T10:00:00+00:00"},
        {"profile_id": "p2", "email": None, "event": "list_enter", "timestamp": "not a time"},
        # No profile id (a key part): it counts as "", and the change loads.
        {"email": "nobody@example.com", "event": "list_enter", "timestamp": "2026-11-01"},
        {"email": "nothing@example.com", "event": "list_exit"},  # no key part: quarantined
        enter,  # the same change fetched twice
    ]
    # The reader sets `id` from the request path /lists/{id}/changes.
    raw = raw_records(spark, MEMBER_LISTS, records).withColumn("id", F.lit("L1"))
    prepared, quarantined = run(spark, MEMBER_LISTS, raw)

    k1 = md5(SOURCE, "L1", "p1", "2026-11-01T10:00:00+00:00")
    k2 = md5(SOURCE, "L1", "p1", "2026-11-02T10:00:00+00:00")
    k3 = md5(SOURCE, "L1", "p2", "not a time")  # the raw text, even when it does not parse
    k4 = md5(SOURCE, "L1", "", "2026-11-01")
    want = expected(
        spark,
        MEMBER_LISTS,
        [
            (k1, "L1", "p1", "ana@example.com", ts(2026, 11, 1, 10, 0, 0), "list_enter",
             ACCOUNT, SOURCE, k1, SYNCED),
            (k2, "L1", "p1", "ana@example.com", ts(2026, 11, 2, 10, 0, 0), "list_exit",
             ACCOUNT, SOURCE, k2, SYNCED),
            (k3, "L1", "p2", None, None, "list_enter", ACCOUNT, SOURCE, k3, SYNCED),
            (k4, "L1", None, "nobody@example.com", ts(2026, 11, 1), "list_enter",
             ACCOUNT, SOURCE, k4, SYNCED),
        ],
    )  # fmt: skip
    assert_frames_equal(prepared.transform(finalize(MEMBER_LISTS)), want)
    assert [reason for reason, _ in quarantined] == [
        "missing every key field (profile_id, timestamp)"
    ]
    assert bad_values(prepared, "member_list_id") == {k3: ["event_at"]}


def test_lists(spark: SparkSession) -> None:
    records: list[Any] = [
        {
            "id": "L1",
            "title": "VIPs ✨",
            "description": 'Spent > £500, "loyal"',
            "status": "READY",
            "type": "DYNAMIC",
            "size": 10,
            "timestamp_created": "2015-11-03T11:48:10+00:00",
            "timestamp_last_refreshed": "2026-11-01T06:00:00+00:00",
            "timestamp_stats_updated": "2026-11-01T00:00:00+00:00",
        },
        {"id": "L2", "title": "Old", "status": "ARCHIVED", "type": "STATIC"},
        {"id": 12345, "title": "numeric id", "timestamp_created": "2015-11-03T11:48:10Z"},
        {"title": "no id"},
        "42",
    ]
    prepared, quarantined = run(spark, LISTS, raw_records(spark, LISTS, records))
    want = expected(
        spark,
        LISTS,
        [
            ("L1", "VIPs ✨", 'Spent > £500, "loyal"', "READY", "DYNAMIC",
             ts(2015, 11, 3, 11, 48, 10), ts(2026, 11, 1, 0, 0, 0),
             ACCOUNT, SOURCE, md5(SOURCE, "L1"), SYNCED),
            ("L2", "Old", None, "ARCHIVED", "STATIC", None, None,
             ACCOUNT, SOURCE, md5(SOURCE, "L2"), SYNCED),
            ("12345", "numeric id", None, None, None, ts(2015, 11, 3, 11, 48, 10), None,
             ACCOUNT, SOURCE, md5(SOURCE, "12345"), SYNCED),
        ],
    )  # fmt: skip
    assert_frames_equal(prepared.transform(finalize(LISTS)), want)
    assert quarantined == [
        ("missing required field 'id'", '{"title": "no id"}'),
        ("record does not match the expected shape", "42"),
    ]


def test_email_events(spark: SparkSession) -> None:
    send = {
        "event_id": "ev1",
        "uuid": "u-1",
        "to_address": "ana@example.com",
        "event_type": "send",
        "dt_occurred": "2026-01-01 10:11:12",
        "bounce_class": "",
        "reason": "",
        "device_type": "",
        "geo_country": "",
        "geo_region": "",
        "geo_timezone": "",
        "target_url": "",
        "campaign_title": 'Sale, 50% "off"\nnow',
        "campaign_type": "mass",
    }
    records: list[Any] = [
        send,
        {
            **send,
            "event_id": "ev2",
            "event_type": "click",
            "device_type": "mobile",
            "geo_country": "FR",
            "geo_region": "Île-de-France",
            "geo_timezone": "Europe/Paris",
            "target_url": "https://shop.example/p?a=1,b=2",
            "dt_occurred": "2026-01-01 11:00:00",
        },
        {**send, "event_id": "ev1-again"},  # same key in a later file: wins
        # No address (a key part): "" in the key, the event loads.
        {**send, "to_address": "", "event_id": "ev-no-address"},
        {**send, "to_address": "", "event_type": " ", "dt_occurred": ""},  # no key part at all
        {**send, "event_type": "bounce", "dt_occurred": "01/01/2026", "bounce_class": "hard"},
    ]
    prepared, quarantined = run(spark, EMAIL_EVENTS, raw_records(spark, EMAIL_EVENTS, records))
    k_send = md5(SOURCE, "ana@example.com", "send", "2026-01-01 10:11:12")
    k_click = md5(SOURCE, "ana@example.com", "click", "2026-01-01 11:00:00")
    k_bounce = md5(SOURCE, "ana@example.com", "bounce", "01/01/2026")
    k_anon = md5(SOURCE, "", "send", "2026-01-01 10:11:12")
    title = 'Sale, 50% "off"\nnow'
    want = expected(
        spark,
        EMAIL_EVENTS,
        [
            (k_send, "ev1-again", "u-1", "ana@example.com", "send", ts(2026, 1, 1, 10, 11, 12),
             None, None, None, None, None, None, None, title, "mass",
             ACCOUNT, SOURCE, k_send, SYNCED),
            (k_click, "ev2", "u-1", "ana@example.com", "click", ts(2026, 1, 1, 11, 0, 0),
             None, None, "mobile", "FR", "Île-de-France", "Europe/Paris",
             "https://shop.example/p?a=1,b=2", title, "mass",
             ACCOUNT, SOURCE, k_click, SYNCED),
            (k_bounce, "ev1", "u-1", "ana@example.com", "bounce", None,
             "hard", None, None, None, None, None, None, title, "mass",
             ACCOUNT, SOURCE, k_bounce, SYNCED),
            (k_anon, "ev-no-address", "u-1", None, "send", ts(2026, 1, 1, 10, 11, 12),
             None, None, None, None, None, None, None, title, "mass",
             ACCOUNT, SOURCE, k_anon, SYNCED),
        ],
    )  # fmt: skip
    assert_frames_equal(prepared.transform(finalize(EMAIL_EVENTS)), want)
    assert [reason for reason, _ in quarantined] == [
        "missing every key field (to_address, event_type, dt_occurred)"
    ]
    assert bad_values(prepared, "email_event_id") == {k_bounce: ["event_at"]}


def test_unsubscribes(spark: SparkSession) -> None:
    records: list[Any] = [
        {
            "profile_id": "p1",
            "email_address": "ana@example.com",
            "type": "email",
            "timestamp": "2017-05-17 22:08:07+00",
            "send_id": "s-1",
            "mass_campaign_id": "12",
            "trigger_campaign_id": None,
            "reason": "too_many",
            "reason_text": "Zu viele E-Mails 📧",
        },
        {"profile_id": "p2", "timestamp": "2017-05-18 01:00:00+00", "mass_campaign_id": 99},
        {"profile_id": "p3", "timestamp": "yesterday", "reason": "other"},
        # Ometria sends unsubscribes with an email address but no profile: they load.
        {"email_address": "x@example.com", "timestamp": "2017-05-18 01:00:00+00"},
        {"profile_id": None, "email_address": "y@example.com", "timestamp": "2017-05-18"},
        {"email_address": "z@example.com", "reason": "no key part"},  # quarantined
    ]
    prepared, quarantined = run(spark, UNSUBSCRIBES, raw_records(spark, UNSUBSCRIBES, records))
    k1 = md5(SOURCE, "p1", "2017-05-17 22:08:07+00")
    k2 = md5(SOURCE, "p2", "2017-05-18 01:00:00+00")
    k3 = md5(SOURCE, "p3", "yesterday")
    k4 = md5(SOURCE, "", "2017-05-18 01:00:00+00")
    k5 = md5(SOURCE, "", "2017-05-18")
    want = expected(
        spark,
        UNSUBSCRIBES,
        [
            (k1, "p1", "ana@example.com", ts(2017, 5, 17, 22, 8, 7), "s-1", "12", None,
             "too_many", "Zu viele E-Mails 📧", ACCOUNT, SOURCE, k1, SYNCED),
            (k2, "p2", None, ts(2017, 5, 18, 1, 0, 0), None, "99", None, None, None,
             ACCOUNT, SOURCE, k2, SYNCED),
            (k3, "p3", None, None, None, None, None, "other", None,
             ACCOUNT, SOURCE, k3, SYNCED),
            (k4, None, "x@example.com", ts(2017, 5, 18, 1, 0, 0), None, None, None, None, None,
             ACCOUNT, SOURCE, k4, SYNCED),
            (k5, None, "y@example.com", ts(2017, 5, 18), None, None, None, None, None,
             ACCOUNT, SOURCE, k5, SYNCED),
        ],
    )  # fmt: skip
    assert_frames_equal(prepared.transform(finalize(UNSUBSCRIBES)), want)
    assert [reason for reason, _ in quarantined] == [
        "missing every key field (profile_id, timestamp)"
    ]
    assert bad_values(prepared, "unsubscribe_id") == {k3: ["event_at"]}


def test_parse_timestamp_and_date_take_the_api_shapes_only(spark: SparkSession) -> None:
    """Ometria's shapes parse (any case, with fractions and offsets); the other shapes a
    plain cast to TIMESTAMP would take (a bare year, single digits, a bare time, a zone
    name, 7 fraction digits, a time without seconds) and impossible dates are NULL."""
    cases: list[tuple[str | None, datetime | None]] = [
        ("2015-11-03T11:48:10+00:00", ts(2015, 11, 3, 11, 48, 10)),
        ("2017-05-17 22:08:07+00", ts(2017, 5, 17, 22, 8, 7)),
        ("2026-01-01 10:11:12", ts(2026, 1, 1, 10, 11, 12)),
        ("2026-01-01", ts(2026, 1, 1)),
        ("2026-01-01T10:11:12Z", ts(2026, 1, 1, 10, 11, 12)),
        ("2026-01-01t10:11:12z", ts(2026, 1, 1, 10, 11, 12)),
        (" 2026-01-01 10:11:12 ", ts(2026, 1, 1, 10, 11, 12)),
        ("2020-02-29T23:59:59.5+01:00", datetime(2020, 2, 29, 22, 59, 59, 500000, tzinfo=UTC)),
        ("2026-01-01T10:11:12.000001", datetime(2026, 1, 1, 10, 11, 12, 1, tzinfo=UTC)),
        ("2026-01-01 10:11:12+0530", ts(2026, 1, 1, 4, 41, 12)),
        ("2026-01-01T10:11:12-08:00", ts(2026, 1, 1, 18, 11, 12)),
        ("2026-01-01T10:11:12+05", ts(2026, 1, 1, 5, 11, 12)),
        ("2026-01-01T00:00:00+18:01", None),
        ("2020-02-29T23:59:59.1234567+01:00", None),
        ("2026-02-30", None),
        ("2026-01-01 24:00:00", None),
        ("2026", None),
        ("2026-01", None),
        ("2026-1-1", None),
        ("10:11:12", None),
        ("2026-01-01T10:11", None),
        ("2026-01-01 10:11:12 UTC", None),
        ("2026-01-01 10:11:12.", None),
        ("+2026-01-01", None),
        ("31/02/1990", None),
        ("", None),
        (None, None),
    ]
    df = spark.createDataFrame(cases, "text string, want timestamp").select(
        "text",
        parse_timestamp(F.col("text")).alias("got"),
        "want",
        parse_date(F.col("text")).alias("got_date"),
        F.to_date("want").alias("want_date"),
    )
    assert_column_equality(df, "got", "want")
    assert_column_equality(df, "got_date", "want_date")
