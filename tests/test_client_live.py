"""The client against a source that misbehaves the way live ones do: records deleted or
inserted while a request pages through them, pages capped below the limit, redirects to
other hosts, odd statuses, huge ``Retry-After`` values, keys that cannot be a header.

Every case talks HTTP to the emulator (or a second server) on loopback; each behaviour is
one of the emulator's explicit options.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from ometria_spark.client import (
    ApiError,
    NotFoundError,
    OmetriaClient,
    OmetriaError,
    Page,
    PagingFacts,
)
from ometria_spark.emulator import Dataset, EmulatorServer
from ometria_spark.emulator.server import LiveChanges
from tests.test_client import make_client

KEY = "test-key-live-5e1f0a"
PAGE = 50


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=23, profiles=400, lists=2), api_key=KEY) as srv:
        yield srv


def client(server: EmulatorServer, **kwargs: Any) -> OmetriaClient:
    return make_client(server, key=KEY, **{"page_size": PAGE, **kwargs})


def delivered(pages: list[Page]) -> list[Any]:
    return [r for p in pages for r in p.fresh]


def ids(records: list[Any]) -> list[str]:
    return [r["id"] for r in records]


# --- records that shift while a request pages through them ---------------------------------


def test_deletions_on_earlier_pages_shift_nothing_past_the_pull(server: EmulatorServer) -> None:
    """Each request deletes two profiles among the first pages: every later record moves
    down two places. Paging by offset alone misses two records per page; with the anchor
    check, every profile that exists at the end is delivered, in id order."""
    ds = server.dataset
    before = ids(ds.profiles)
    server.live = LiveChanges(seconds_per_request=1, deletes=2, paths=("/profiles",), window=0.2)
    with client(server) as c:
        pages = list(c.profile_pages())
    server.live = None
    got = ids(delivered(pages))
    remaining = ids(ds.profiles)
    gone = {p["id"] for p in ds.deleted}
    assert len(gone) >= 14  # the account did change under the pull
    assert set(remaining) <= set(got)  # nothing that exists was skipped
    assert set(got) <= set(before)  # and nothing made up
    assert len(got) == len(set(got))  # each delivered once
    assert got == sorted(got)
    # Paging by offset alone (what the request would have fetched without the check)
    # skips records: the test's changes do bite.
    plain = [r.params["offset"] for r in server.request_log]
    assert len(plain) > len(pages)  # it stepped back at least once


def test_a_deleted_anchor_and_many_deletions_are_recovered(server: EmulatorServer) -> None:
    """More deletions before the offset than a page holds: the request steps back as far as
    it must (a page, then twice as far) and still misses nothing."""
    ds = server.dataset
    with client(server, page_size=20) as c:
        pages = c.profile_pages()
        first = next(pages)
        with ds.lock:  # the anchor itself, and 40 records before it, are merged away
            for _ in range(41):
                ds.deleted.append(ds.profiles.pop(0))
            ds.version += 1
        rest = list(pages)
    got = ids(delivered([first, *rest]))
    assert set(ids(ds.profiles)) <= set(got)
    assert len(got) == len(set(got))


def test_insertions_on_earlier_pages_are_harmless_re_reads(server: EmulatorServer) -> None:
    ds = server.dataset
    with client(server) as c:
        pages = c.profile_pages()
        first = next(pages)
        with ds.lock:  # three sign-ups whose ids sort first
            for n in range(3):
                ds.profiles.insert(0, {**ds.profiles[0], "id": f"0000-00000{n}-000000"})
            ds.version += 1
        rest = list(pages)
    got = ids(delivered([first, *rest]))
    # Every profile of the start is there once; the sign-ups are the next pull's (they
    # were updated after it began, see the cursor bound).
    assert [i for i in got if not i.startswith("0000-")] == sorted(
        i for i in ids(ds.profiles) if not i.startswith("0000-")
    )
    assert rest[0].repeats != (0,)  # the page re-read records it had delivered


def test_a_changed_record_at_the_anchor_is_kept_not_dropped(server: EmulatorServer) -> None:
    """The anchor is re-read; when it changed in between, the new version is delivered."""
    ds = server.dataset
    with client(server) as c:
        pages = c.profile_pages()
        first = next(pages)
        with ds.lock:
            ds.profiles[PAGE - 1] = {**ds.profiles[PAGE - 1], "lifecycle_status": "changed"}
            ds.version += 1
        second = next(pages)
    assert second.repeats == ()
    assert second.records[0]["lifecycle_status"] == "changed"
    assert second.records[0]["id"] == first.records[-1]["id"]


# --- pages capped below the limit -----------------------------------------------------------


def test_a_page_cap_is_found_once_remembered_and_used(server: EmulatorServer) -> None:
    """A server that returns at most 7 records per page whatever the limit: the first short
    page is probed, the cap is learned and used, and the next client (the next run, from
    the facts it was given) pages with it at once."""
    ds = server.dataset
    list_id = ds.lists[0]["id"]
    since = "2025-01-01T00:00:00"
    want = [c for c in ds.list_changes[list_id] if c["timestamp"] >= since]
    assert len(want) > 20
    server.page_caps = {"changes": 7}
    saved: list[dict[str, dict[str, int]]] = []
    facts = PagingFacts(on_change=saved.append)
    with client(server, paging=facts) as c:
        got = delivered(list(c.list_change_pages(list_id, since)))
    assert got == want
    assert saved[-1] == {"list_changes": {"cap": 7, "honoured": 7}}

    server.reset_log()
    with client(server, paging=PagingFacts(saved[-1])) as c:
        assert delivered(list(c.list_change_pages(list_id, since))) == want
    assert {r.params["limit"] for r in server.request_log} == {"7"}


def test_a_short_page_that_is_the_end_is_probed_once(server: EmulatorServer) -> None:
    ds = server.dataset
    since = "2025-12-01T00:00:00"
    facts = PagingFacts()
    with client(server, paging=facts) as c:
        got = delivered(list(c.unsubscribe_pages(since, "2026-01-01T00:00:00")))
    want = [u for u in ds.unsubscribes if u["timestamp"] >= "2025-12-01"]
    assert got == want and 0 < len(want) < PAGE
    assert len(server.request_log) == 2  # the page, and one probe after it
    assert facts.as_dict() == {"unsubscribes": {"honoured": len(want)}}
    server.reset_log()
    shorter = want[1]["timestamp"][:19].replace(" ", "T")
    with client(server, paging=facts) as c:  # shorter than a page seen before: no probe
        assert delivered(list(c.unsubscribe_pages(shorter, "2026-01-01T00:00:00"))) == want[1:]
    assert len(server.request_log) == 1


# --- statuses, redirects, Retry-After, keys --------------------------------------------------


class Catcher(BaseHTTPRequestHandler):
    """Another host: records the headers of every request it gets."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Catcher.seen.append(dict(self.headers))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_host() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), Catcher)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Catcher.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_redirect_to_another_host_fails_and_never_carries_the_key(
    server: EmulatorServer, other_host: str
) -> None:
    server.inject("302", path="/profiles", headers={"Location": f"{other_host}/steal"})
    with client(server) as c, pytest.raises(ApiError) as info:
        list(c.profile_pages())
    message = str(info.value)
    assert "redirect to http://127.0.0.1:" in message and "not followed" in message
    assert KEY not in message
    assert Catcher.seen == []  # the other host was never asked


def test_a_redirect_within_the_api_host_is_followed(server: EmulatorServer) -> None:
    server.inject("307", path="/lists", headers={"Location": f"{server.url}/lists?mode=all"})
    with client(server) as c:
        (page,) = list(c.list_pages())
    assert page.records == server.dataset.lists
    assert [r.status for r in server.request_log] == [307, 200]


@pytest.mark.parametrize("status", ["404", "418", "400", "409"])
def test_an_odd_status_on_a_page_fails_the_request(server: EmulatorServer, status: str) -> None:
    """Never read as "no more records": any status but 200 (after retries) fails it."""
    with client(server) as c:
        pages = c.profile_pages()
        next(pages)
        server.inject(status, path="/profiles")
        expected = NotFoundError if status == "404" else ApiError
        with pytest.raises(expected, match=f"HTTP {status}"):
            next(pages)


def test_a_huge_retry_after_fails_at_once_with_the_reason(server: EmulatorServer) -> None:
    server.inject("429", count=3, path="/profiles", headers={"Retry-After": "86400"})
    started = time.monotonic()
    with client(server, max_retry_wait=300) as c, pytest.raises(ApiError) as info:
        list(c.profile_pages())
    assert time.monotonic() - started < 5
    assert "Retry-After" in str(info.value) and "api.max_retry_wait_seconds" in str(info.value)
    assert len(server.request_log) == 1


def test_a_retry_after_within_the_cap_is_waited_for(server: EmulatorServer) -> None:
    server.inject("429", path="/lists", headers={"Retry-After": "1"})
    with client(server, max_retry_wait=2) as c:
        started = time.monotonic()
        list(c.list_pages())
    assert time.monotonic() - started >= 0.95


@pytest.mark.parametrize(
    "bad", [KEY[:8] + "\n" + KEY[8:], KEY + "\r\nX-Other: 1", "ké" + KEY, KEY + "\x00"]
)
def test_a_key_that_is_not_one_printable_line_is_refused_unshown(
    server: EmulatorServer, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OmetriaError) as info:
        OmetriaClient(server.url, bad)
    text = str(info.value) + repr(info.value) + caplog.text
    assert "not one line of printable text" in str(info.value)
    assert KEY[:8] not in text and KEY[8:] not in text
    assert server.request_log == []
