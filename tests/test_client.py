"""OmetriaClient against the real emulator on loopback: paging, retries, errors, throttle."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from ometria_spark.client import (
    ApiError,
    AuthError,
    NotFoundError,
    OmetriaClient,
    OmetriaError,
    Page,
    Throttle,
    api_key_from_env,
)
from ometria_spark.emulator import Dataset, EmulatorServer

KEY = "s3cr3t-test-key-do-not-log"
PAGE = 100
PROFILES = 450  # 4 full pages and one short page


@pytest.fixture
def dataset() -> Dataset:
    return Dataset.generate(seed=11, profiles=PROFILES, lists=4)


@pytest.fixture
def server(dataset: Dataset) -> Iterator[EmulatorServer]:
    with EmulatorServer(dataset, api_key=KEY) as srv:
        yield srv


def make_client(server: EmulatorServer, *, key: str = KEY, **kwargs: object) -> OmetriaClient:
    options: dict[str, object] = {
        "page_size": PAGE,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "throttle": Throttle(1000),
    }
    options.update(kwargs)
    return OmetriaClient(server.url, key, **options)  # type: ignore[arg-type]


def records(pages: Iterator[Page]) -> list[object]:
    """The records the pages deliver (each page after the first re-reads its anchor)."""
    return [r for page in pages for r in page.fresh]


def statuses(server: EmulatorServer) -> list[int]:
    return [r.status for r in server.request_log]


def test_profiles_full_pull_lands_every_record_in_order(
    server: EmulatorServer, dataset: Dataset
) -> None:
    with make_client(server) as client:
        pages = list(client.profile_pages())
    assert [r for p in pages for r in p.fresh] == dataset.profiles
    # Each page after the first starts on the last record of the one before (the anchor,
    # which shows whether records shifted), and marks it as a repeat.
    assert [p.offset for p in pages] == [0, 99, 198, 297, 396]
    assert [p.repeats for p in pages] == [(), (0,), (0,), (0,), (0,)]
    assert [p.page_number for p in pages] == [0, 1, 2, 3, 4]
    assert pages[0].endpoint == "/profiles"
    assert pages[1].params == {"limit": "100", "offset": "99"}
    assert pages[0].fetched_at.endswith("Z")
    # The server's clock (the emulated account's), from the Date header.
    assert {p.server_date for p in pages} == {"2026-01-01T00:00:00Z"}
    assert [r.params for r in server.request_log][-1] == {"limit": "100", "offset": "396"}


def test_profiles_resume_from_start_offset(server: EmulatorServer, dataset: Dataset) -> None:
    with make_client(server) as client:
        got = records(client.profile_pages(start_offset=300))
    assert got == dataset.profiles[300:]
    # With the records landed last, the resumed request checks its anchor first.
    server.reset_log()
    with make_client(server) as client:
        got = records(client.profile_pages(start_offset=300, tail=dataset.profiles[200:300]))
    assert got == dataset.profiles[300:]
    assert server.request_log[0].params["offset"] == "299"


@pytest.mark.parametrize("fault", ["429", "500", "503", "drop", "truncated"])
def test_profiles_survive_injected_faults(
    server: EmulatorServer, dataset: Dataset, fault: str
) -> None:
    server.inject(fault, count=2, path="/profiles")
    with make_client(server) as client:
        got = records(client.profile_pages())
    assert got == dataset.profiles
    expected_first = 0 if fault == "drop" else (200 if fault == "truncated" else int(fault))
    assert statuses(server)[:3] == [expected_first, expected_first, 200]
    assert len(server.request_log) == 5 + 2


def test_retry_after_header_is_honoured(server: EmulatorServer, dataset: Dataset) -> None:
    server.inject("429-retry-after", path="/profiles")
    with make_client(server) as client:
        started = time.monotonic()
        got = records(client.profile_pages())
        elapsed = time.monotonic() - started
    assert got == dataset.profiles
    log = server.request_log
    assert log[0].status == 429
    assert log[1].time - log[0].time >= 0.95
    assert elapsed >= 0.95


def test_slow_answer_past_the_timeout_is_retried(server: EmulatorServer, dataset: Dataset) -> None:
    server.slow_seconds = 1.5
    server.inject("slow", path="/profiles")
    with make_client(server, timeout=0.5) as client:
        got = records(client.profile_pages())
    assert got == dataset.profiles
    # The slow answer is logged when the server finally sends it, after the client gave up.
    deadline = time.monotonic() + 3
    while len(server.request_log) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.request_log) == 6
    assert sum(1 for r in server.request_log if r.params["offset"] == "0") == 2


def test_lists_single_page_of_all_lists(server: EmulatorServer, dataset: Dataset) -> None:
    server.inject("503", path="/lists")
    with make_client(server) as client:
        pages = list(client.list_pages())
    assert len(pages) == 1
    assert pages[0].records == dataset.lists
    assert pages[0].params == {"mode": "all"}
    assert any(x["status"] == "ARCHIVED" for x in pages[0].records)


def test_list_changes_land_every_change_since(server: EmulatorServer, dataset: Dataset) -> None:
    list_id = dataset.lists[0]["id"]
    since = "2025-11-01T00:00:00"
    expected = [c for c in dataset.list_changes[list_id] if c["timestamp"] >= since]
    assert expected
    server.inject("500", path=f"/lists/{list_id}/changes")
    server.inject("drop", path=f"/lists/{list_id}/changes")
    with make_client(server, page_size=7) as client:
        pages = list(client.list_change_pages(list_id, since))
    assert [r for p in pages for r in p.fresh] == expected
    assert pages[0].endpoint == f"/lists/{list_id}/changes"
    assert pages[0].params == {"since": since, "limit": "7", "offset": "0"}


def test_unsubscribes_land_every_record_in_window(server: EmulatorServer, dataset: Dataset) -> None:
    since, before = "2025-10-01T00:00:00", "2025-12-15T00:00:00"
    expected = [
        u
        for u in dataset.unsubscribes
        if "2025-10-01 00:00:00+00" <= u["timestamp"] < "2025-12-15 00:00:00+00"
    ]
    assert len(expected) > 3
    server.inject("429", path="/unsubscribes")
    server.inject("truncated", path="/unsubscribes")
    with make_client(server, page_size=3) as client:
        got = records(client.unsubscribe_pages(since, before))
    assert got == expected


def test_update_since_after_advance_day_returns_only_changed_profiles(
    server: EmulatorServer, dataset: Dataset
) -> None:
    before = copy.deepcopy(dataset.profiles)
    since = dataset.now.strftime("%Y-%m-%dT%H:%M:%S")
    dataset.advance_day()
    old = {p["id"]: p for p in before}
    changed = [p for p in dataset.profiles if old.get(p["id"]) != p]
    assert changed
    with make_client(server, page_size=5) as client:
        got = records(client.profile_pages(update_since=since))
    assert got == changed
    assert all(r.params["updateSince"] == since for r in server.request_log)


def test_refused_key_raises_auth_error_without_the_key(
    server: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-key-0123456789"
    client = OmetriaClient(server.url, wrong, backoff_base=0.01, throttle=Throttle(1000))
    with pytest.raises(AuthError) as info:
        list(client.profile_pages())
    assert "/profiles" in str(info.value)
    assert "refused" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert statuses(server) == [403]


def test_unknown_list_raises_not_found(server: EmulatorServer) -> None:
    with make_client(server) as client, pytest.raises(NotFoundError) as info:
        list(client.list_change_pages("no-such-list", "2025-01-01T00:00:00"))
    assert "/lists/no-such-list/changes" in str(info.value)
    assert statuses(server) == [404]


def test_server_ignoring_offset_fails_the_request_after_the_first_page(
    server: EmulatorServer, dataset: Dataset
) -> None:
    # Stopping there would pass the first page off as all the data.
    server.ignore_offset = True
    with make_client(server) as client:
        pages = client.profile_pages()
        first = next(pages)
        with pytest.raises(ApiError, match="/profiles ignores offset: the page at offset 99"):
            next(pages)
    assert first.records == dataset.profiles[:PAGE]
    assert len(server.request_log) == 2


def test_retries_exhausted_raise_api_error(server: EmulatorServer) -> None:
    server.inject("500", count=10, path="/profiles")
    with make_client(server, max_attempts=3) as client, pytest.raises(ApiError) as info:
        list(client.profile_pages())
    assert "/profiles" in str(info.value)
    assert "500" in str(info.value)
    assert statuses(server) == [500, 500, 500]


def test_bad_request_is_not_retried(server: EmulatorServer) -> None:
    with make_client(server, page_size=300) as client, pytest.raises(ApiError) as info:
        list(client.profile_pages())
    assert "400" in str(info.value)
    assert statuses(server) == [400]


def test_key_never_appears_in_logs_reprs_or_errors(
    server: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for fault in ("429", "500", "drop", "truncated"):
        server.inject(fault, path="/profiles")
    server.inject("500", count=5, path="/unsubscribes")
    with make_client(server) as client:
        list(client.profile_pages())
    with make_client(server, max_attempts=3) as client:
        with pytest.raises(ApiError) as info:
            list(client.unsubscribe_pages("2025-01-01T00:00:00", "2026-01-01T00:00:00"))
        texts = [repr(client), str(client), str(info.value), repr(info.value)]
    assert any("attempt" in r.getMessage() for r in caplog.records)
    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    assert all(KEY not in t for t in texts)


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", "abc")
    assert api_key_from_env("OMETRIA_TEST_KEY") == "abc"
    monkeypatch.setenv("OMETRIA_TEST_KEY", "")
    with pytest.raises(OmetriaError, match="OMETRIA_TEST_KEY"):
        api_key_from_env("OMETRIA_TEST_KEY")
    monkeypatch.delenv("OMETRIA_TEST_KEY")
    with pytest.raises(OmetriaError, match="OMETRIA_TEST_KEY"):
        api_key_from_env("OMETRIA_TEST_KEY")


def test_throttle_spaces_starts_across_threads() -> None:
    throttle = Throttle(20)
    starts: list[float] = []
    lock = threading.Lock()

    early: list[float] = []

    def worker() -> None:
        for _ in range(5):
            booked = throttle.wait()
            released = time.monotonic()
            with lock:
                starts.append(booked)
                early.append(booked - released)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 15
    # The booked starts are exactly one interval apart, across threads (the times a thread
    # records after waking carry scheduling noise, so the test reads the booked ones) ...
    assert min(gaps) >= 0.05 - 1e-9
    # ... and no caller is released before its booked start (sleep may overshoot only).
    assert max(early) <= 1e-3
    # 15 starts span 14 intervals: no slack added on top of the limit.
    assert 14 * 0.05 - 1e-9 <= starts[-1] - starts[0] <= 14 * 0.05 + 0.1


def test_throttled_pull_stays_under_the_server_limit_at_full_rate(dataset: Dataset) -> None:
    rps = 10.0
    with EmulatorServer(dataset, api_key=KEY, requests_per_second=rps) as srv:
        client = make_client(srv, page_size=25, throttle=Throttle(rps))
        with client:
            got = records(client.profile_pages())
        log = srv.request_log
    assert got == dataset.profiles
    assert [r.status for r in log] == [200] * 19
    achieved = (len(log) - 1) / (log[-1].time - log[0].time)
    assert 0.95 * rps <= achieved <= rps * 1.01


def test_shared_throttle_across_clients(server: EmulatorServer) -> None:
    throttle = Throttle(20)
    a = make_client(server, throttle=throttle)
    b = make_client(server, throttle=throttle)
    started = time.monotonic()
    for _ in range(3):
        list(a.list_pages())
        list(b.list_pages())
    assert time.monotonic() - started >= 5 * 0.05 - 0.005
