"""The stream registry: the one ordered list of streams, and a sixth API stream added as one
new module (plus its table spec) that syncs end to end with no other file changed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import StringType, TimestampType

from ometria_spark import streams
from ometria_spark.config import all_streams, config_from_dict
from ometria_spark.sync import run
from ometria_spark.tables import (
    ACCOUNT_ID,
    KEY_COLUMN,
    SOURCE_ID,
    SYNCED_AT,
    TABLES,
    Column,
    Source,
    TableSpec,
)
from tests.expected import md5
from tests.frames import assert_frames_equal
from tests.test_sync import ACCOUNT, KEY, SOURCE

# All a sixth stream needs: this module in ometria_spark/streams/, and its table spec.
ORDERS_MODULE = '''
"""Orders: ``/orders``, paged by offset, ``updatedSince`` from the cursor."""

from ometria_spark.landing import Request
from ometria_spark.streams import ApiStream, Planned


def plan(inputs):
    args = {"since": inputs.start()} if "" in inputs.cursors else {}
    return Planned((Request("orders", args),), inputs.cursors.get(""))


def pages(client, request, resume):
    params = {"updatedSince": request.args["since"]} if "since" in request.args else {}
    return client.paged("orders", "/orders", params, resume.offset, resume.tail)


STREAM = ApiStream(name="orders", order=35, kind="orders", plan=plan, pages=pages,
                   cursor_fields=("updated",))
'''
ORDERS = TableSpec(
    name="orders",
    columns=(
        Column("order_id", StringType(), Source("field", "id")),
        Column("total", StringType(), Source("field", "total")),
        Column("updated_at", TimestampType(), Source("field", "updated")),
        Column(ACCOUNT_ID, StringType(), Source("account_id")),
        Column(SOURCE_ID, StringType(), Source("source_id")),
        Column(KEY_COLUMN, StringType(), Source("key")),
        Column(SYNCED_AT, TimestampType(), Source("synced_at")),
    ),
    key_fields=("id",),
)


def test_one_ordered_list_of_streams() -> None:
    assert all_streams() == ("lists", "profiles", "member_lists", "unsubscribes", "email_events")
    assert [s.name for s in streams.api_streams()] == list(all_streams()[:4])
    assert all(s.name in TABLES for s in streams.registry())
    assert streams.for_request("list_changes").name == "member_lists"
    with pytest.raises(ValueError, match="not an API stream: email_events"):
        streams.api_stream("email_events")


class _Orders(BaseHTTPRequestHandler):
    records: list[dict[str, Any]] = []
    seen: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:  # (the name http.server calls)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        type(self).seen.append(query)
        if url.path != "/v2/orders":
            self.send_error(404)
            return
        since = query.get("updatedSince", [""])[0]
        matching = [r for r in self.records if r["updated"] >= since]
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        body = json.dumps(matching[offset : offset + limit]).encode()
        self.send_response(200)  # (with a Date header: the server's clock)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def orders_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Orders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def sixth_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``orders.py`` as if it were in ``ometria_spark/streams/`` (a folder of the package's
    path), and its spec as if it were in ``tables.py``."""
    folder = tmp_path / "more_streams"
    folder.mkdir()
    (folder / "orders.py").write_text(ORDERS_MODULE, encoding="utf-8")
    monkeypatch.setattr(streams, "__path__", [*streams.__path__, str(folder)])
    monkeypatch.setitem(TABLES, "orders", ORDERS)
    streams.registry.cache_clear()
    try:
        yield
    finally:
        streams.registry.cache_clear()


def order(number: int, total: str, updated: str) -> dict[str, Any]:
    return {"id": f"o{number}", "total": total, "updated": updated}


def test_a_sixth_api_stream_is_one_new_module(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orders_api: str,
    sixth_stream: None,
) -> None:
    assert all_streams() == (
        "lists", "profiles", "member_lists", "orders", "unsubscribes", "email_events",
    )  # fmt: skip
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    config = config_from_dict(
        {
            "account_id": ACCOUNT,
            "source_id": SOURCE,
            "api": {"base_url": orders_api, "key_env": "OMETRIA_TEST_KEY", "page_size": 2,
                    "requests_per_second": 200},
            "storage": {"raw_path": str(tmp_path / "raw"), "tables_path": str(tmp_path / "t")},
            "sync": {"streams": ["orders"], "start_date": "2025-06-01"},
        }
    )  # fmt: skip
    _Orders.records = [
        order(1, "12.50", "2025-06-02T10:00:00"),
        order(2, "3.00", "2025-06-03T11:00:00"),
        order(3, "99.99", "2025-06-04T12:00:00"),
    ]
    first = run(spark, config)
    assert first.ok, [r.error for r in first.streams]
    # A day later: one order changed, one new; the pull starts at the cursor less the lookback.
    _Orders.records[1] = order(2, "4.00", "2025-06-05T09:00:00")
    _Orders.records.append(order(4, "7.25", "2025-06-05T09:30:00"))
    _Orders.seen.clear()
    second = run(spark, config)
    assert second.ok, [r.error for r in second.streams]
    assert {q["updatedSince"][0] for q in _Orders.seen} == {"2025-06-04T11:00:00"}
    assert [(r.stream, r.rows_inserted, r.rows_updated) for r in second.streams] == [
        ("orders", 1, 1)
    ]

    def ts(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=None)

    want = spark.createDataFrame(
        [
            (r["id"], r["total"], ts(r["updated"]), ACCOUNT, SOURCE, md5(SOURCE, r["id"]))
            for r in _Orders.records
        ],
        "order_id string, total string, updated_at timestamp, _account_id string, "
        "__source_id string, __sync_key string",
    )
    got = spark.read.format("delta").load(config.table_location("orders")).drop(SYNCED_AT)
    assert_frames_equal(got, want)
    cursor = spark.read.format("delta").load(config.table_location("_sync_state"))
    assert [(r["stream"], r["cursor"]) for r in cursor.collect()] == [
        ("orders", "2025-06-05T09:30:00")
    ]
