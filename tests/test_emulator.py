"""The emulator: its data set, its HTTP API (spoken to over loopback) and its export files."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from ometria_spark.emulator import Dataset, EmulatorServer, export_files, write_local, write_s3
from ometria_spark.emulator.exports import EXPORT_COLUMNS

KEY = "emulator-test-key"
AUTH = {"X-Ometria-Auth": KEY}
ID_SHAPE = re.compile(r"^[0-9a-f]{4}-[0-9a-f]{6}-[0-9a-f]{6}$")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return Dataset.generate(seed=3, profiles=400, lists=5)


@pytest.fixture
def server(dataset: Dataset) -> Iterator[EmulatorServer]:
    with EmulatorServer(dataset, api_key=KEY) as srv:
        yield srv


def get(server: EmulatorServer, path: str, **params: str) -> requests.Response:
    return requests.get(server.url + path, params=params, headers=AUTH, timeout=5)


# -- data set ------------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed() -> None:
    a = Dataset.generate(seed=5, profiles=200)
    b = Dataset.generate(seed=5, profiles=200)
    c = Dataset.generate(seed=6, profiles=200)
    assert a == b
    assert a.profiles != c.profiles


def test_profile_ids_are_unique_sorted_and_shaped(dataset: Dataset) -> None:
    ids = [p["id"] for p in dataset.profiles]
    assert len(ids) == 400
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(ID_SHAPE.match(i) for i in ids)


def test_profiles_carry_the_awkward_values_a_connector_must_survive(dataset: Dataset) -> None:
    profiles = dataset.profiles
    text = json.dumps(profiles, ensure_ascii=False)
    for needle in ("Zoë", "Łódź", "東京", "🌸", '\\"Old\\" Mill Lane, Unit 3'):
        assert needle in text
    assert any(p["phone_number"] is None for p in profiles)
    assert any("customer_id" not in p for p in profiles)
    assert any("middlename" in p for p in profiles)
    assert any(p["date_of_birth"] is None for p in profiles)
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
    assert all(stamp.match(p["update_since"]) for p in profiles)
    assert all(stamp.match(p["dates"]["account_created"]) for p in profiles)
    assert all(
        isinstance(p["seen"], bool) and isinstance(p["is_email_valid"], bool) for p in profiles
    )
    dob = [p["date_of_birth"] for p in profiles if p["date_of_birth"]]
    assert all(re.match(r"^\d{4}-\d\d-\d\d$", d) for d in dob)


def test_lists_unsubscribes_and_events_have_their_shapes(dataset: Dataset) -> None:
    assert {x["status"] for x in dataset.lists} == {"READY", "ARCHIVED"}
    assert set(dataset.list_changes) == {x["id"] for x in dataset.lists}
    unsub_stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00$")
    assert all(unsub_stamp.match(u["timestamp"]) for u in dataset.unsubscribes)
    assert any(u["reason"] is None for u in dataset.unsubscribes)
    events = dataset.email_events
    assert {e["event_type"] for e in events} >= {"send", "open", "click", "bounce"}
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", e["dt_occurred"]) for e in events)
    assert any("\n" in e["campaign_title"] for e in events)
    assert len({e["event_id"] for e in events}) == len(events)


def test_advance_day_changes_a_few_profiles_within_the_new_day() -> None:
    ds = Dataset.generate(seed=9, profiles=1000)
    before = {p["id"]: p for p in ds.profiles}
    day_start = ds.now
    ds.advance_day()
    assert ds.now == day_start + timedelta(days=1)
    lo, hi = day_start.isoformat(), ds.now.isoformat()
    changed = [p for p in ds.profiles if before.get(p["id"]) != p]
    updated = [p for p in changed if p["id"] in before]
    added = [p for p in changed if p["id"] not in before]
    assert len(updated) == 20 and len(added) == 10
    assert all(lo <= p["update_since"] < hi for p in changed)
    ids = [p["id"] for p in ds.profiles]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    new_events = [e for e in ds.email_events if e["dt_occurred"] >= "2026-01-01"]
    assert new_events and all(e["dt_occurred"] < "2026-01-02" for e in new_events)
    assert any(u["timestamp"] >= "2026-01-01" for u in ds.unsubscribes)


# -- HTTP API ------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_403_with_json_body(server: EmulatorServer) -> None:
    bare = requests.get(server.url + "/profiles", timeout=5)
    wrong = requests.get(server.url + "/profiles", headers={"X-Ometria-Auth": "x"}, timeout=5)
    for response in (bare, wrong):
        assert response.status_code == 403
        assert "error" in response.json()


def test_profiles_paging_defaults_and_limits(server: EmulatorServer, dataset: Dataset) -> None:
    default = get(server, "/profiles")
    assert default.headers["Content-Type"] == "application/json"
    assert default.json() == dataset.profiles[:10]
    assert get(server, "/profiles", limit="250", offset="390").json() == dataset.profiles[390:]
    assert get(server, "/profiles", limit="251").status_code == 400
    server.ignore_offset = True
    assert get(server, "/profiles", limit="5", offset="50").json() == dataset.profiles[:5]


def test_profiles_update_since_accepts_plain_offset_and_z_forms(
    server: EmulatorServer, dataset: Dataset
) -> None:
    cut = "2025-06-01T00:00:00+00:00"
    expected = [p for p in dataset.profiles if p["update_since"] >= cut]
    assert 0 < len(expected) < len(dataset.profiles)
    for form in ("2025-06-01T00:00:00", "2025-06-01T00:00:00Z", "2025-06-01T02:00:00+02:00"):
        assert get(server, "/profiles", limit="250", updateSince=form).json() == expected
    assert get(server, "/profiles", updateSince="yesterday").status_code == 400


def test_lists_modes(server: EmulatorServer, dataset: Dataset) -> None:
    active = [x for x in dataset.lists if x["status"] == "READY"]
    archived = [x for x in dataset.lists if x["status"] == "ARCHIVED"]
    assert get(server, "/lists").json() == active
    assert get(server, "/lists", mode="archived").json() == archived
    assert get(server, "/lists", mode="all").json() == dataset.lists
    assert get(server, "/lists", mode="bogus").status_code == 400


def test_list_changes_since_paging_and_unknown_list(
    server: EmulatorServer, dataset: Dataset
) -> None:
    list_id = dataset.lists[0]["id"]
    changes = dataset.list_changes[list_id]
    since = changes[5]["timestamp"]
    expected = [c for c in changes if c["timestamp"] >= since]
    assert get(server, f"/lists/{list_id}/changes", since=since).json() == expected
    page = get(server, f"/lists/{list_id}/changes", since=since, limit="2", offset="1").json()
    assert page == expected[1:3]
    assert get(server, "/lists/404404/changes", since=since).status_code == 404


def test_unsubscribes_since_inclusive_before_exclusive(
    server: EmulatorServer, dataset: Dataset
) -> None:
    unsubs = dataset.unsubscribes
    first, last = unsubs[1]["timestamp"], unsubs[-2]["timestamp"]

    def as_param(stamp: str) -> str:
        return stamp[:19].replace(" ", "T")

    got = get(server, "/unsubscribes", since=as_param(first), before=as_param(last)).json()
    assert got == [u for u in unsubs if first <= u["timestamp"] < last]
    assert got[0]["timestamp"] == first
    assert all(u["timestamp"] != last for u in got)


def test_rate_limit_answers_429_with_optional_retry_after(dataset: Dataset) -> None:
    for retry_after in (False, True):
        with EmulatorServer(
            dataset, api_key=KEY, requests_per_second=3, retry_after=retry_after
        ) as srv:
            answers = [get(srv, "/lists") for _ in range(5)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
            assert ("Retry-After" in answers[-1].headers) is retry_after
            time.sleep(1.05)
            assert get(srv, "/lists").status_code == 200


def test_injected_faults_hit_matching_requests_only(
    server: EmulatorServer, dataset: Dataset
) -> None:
    server.inject("503", count=2, path="/profiles")
    server.inject("429-retry-after", path="/v2/lists")
    assert get(server, "/lists", mode="all").headers["Retry-After"] == "1"
    assert get(server, "/profiles").status_code == 503
    assert get(server, "/profiles").status_code == 503
    assert get(server, "/profiles").status_code == 200
    server.inject("truncated")
    truncated = get(server, "/lists", mode="all")
    assert truncated.status_code == 200
    with pytest.raises(ValueError):
        truncated.json()
    server.inject("drop")
    with pytest.raises(requests.ConnectionError):
        get(server, "/lists")
    assert [r.status for r in server.request_log] == [429, 503, 503, 200, 200, 0]
    assert server.request_log[0].params == {"mode": "all"}
    server.reset_log()
    assert server.request_log == []
    with pytest.raises(ValueError):
        server.inject("teapot")


def test_url_is_loopback_under_v2(server: EmulatorServer) -> None:
    assert re.match(r"^http://127\.0\.0\.1:\d+/v2$", server.url)


# -- export files --------------------------------------------------------------------------


def test_csv_exports_round_trip_through_the_csv_module(dataset: Dataset) -> None:
    events = dataset.email_events
    files = export_files(events, files=2)
    assert all(re.match(r"^\d{4}/\d\d/\d\d/email_events_[01]\.csv\.gz$", n) for n, _ in files)
    rows = []
    for name, data in files:
        reader = csv.DictReader(io.StringIO(gzip.decompress(data).decode("utf-8"), newline=""))
        assert reader.fieldnames == EXPORT_COLUMNS
        file_rows = list(reader)
        day = name[:10].replace("/", "-")
        assert all(r["dt_occurred"].startswith(day) for r in file_rows)
        rows.extend(file_rows)
    expected = [{c: "" if e[c] is None else str(e[c]) for c in EXPORT_COLUMNS} for e in events]
    by_id = {r["event_id"]: r for r in expected}
    assert len(rows) == len(expected)
    assert {r["event_id"]: r for r in rows} == by_id


def test_jsonl_exports_uncompressed(dataset: Dataset) -> None:
    events = dataset.email_events[:50]
    files = export_files(events, fmt="json", compress=False, files=1)
    assert all(n.endswith(".jsonl") for n, _ in files)
    lines = [json.loads(line) for _, data in files for line in data.decode("utf-8").splitlines()]
    assert sorted(lines, key=lambda e: e["event_id"]) == sorted(events, key=lambda e: e["event_id"])
    assert "Été" in b"".join(d for _, d in files).decode("utf-8")


def test_write_local(tmp_path: Path, dataset: Dataset) -> None:
    files = export_files(dataset.email_events[:20])
    paths = write_local(tmp_path, files)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [n for n, _ in files]
    assert [p.read_bytes() for p in paths] == [d for _, d in files]


def test_write_s3(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    files = export_files(dataset.email_events[:20], files=1)
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="exports")
        keys = write_s3(s3, "exports", "ometria/email/", files)
        assert keys == [f"ometria/email/{n}" for n, _ in files]
        body = s3.get_object(Bucket="exports", Key=keys[0])["Body"].read()
        assert body == files[0][1]


# -- command line --------------------------------------------------------------------------


def test_module_runs_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "ometria_spark.emulator"),
            *("--port", "0", "--profiles", "50", "--seed", "1", "--exports-dir", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("OMETRIA_EMULATOR_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        answer = requests.get(
            url + "/profiles", headers={"X-Ometria-Auth": "emulator-key"}, timeout=5
        )
        assert len(answer.json()) == 10
        assert list(tmp_path.rglob("email_events_*.csv.gz"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
