"""Config: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ometria_spark.config import ApiConfig, Config, ConfigError, load_config

MINIMAL = """
account_id: acct-1
source_id: 9001
storage:
  raw_path: /tmp/raw
  tables_path: /tmp/tables
sync:
  streams: [profiles, lists]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.source_id == "9001"  # a YAML number is taken as the id's text
    assert config.api == ApiConfig()
    assert config.api.requests_per_second == 4.0
    assert config.sync.streams == ("profiles", "lists")
    assert config.table_location("profiles") == "/tmp/tables/profiles"
    assert config.table_name("profiles") == "ometria.profiles"


def test_managed_table_names(tmp_path: Path) -> None:
    text = MINIMAL.replace("  tables_path: /tmp/tables\n", "  catalog: main\n")
    config = load_config(write(tmp_path, text))
    assert config.table_location("lists") == "main.ometria.lists"


def test_overrides_use_dotted_keys(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MINIMAL),
        {"api.base_url": "http://127.0.0.1:1/v2", "api.page_size": "100", "sync.streams": "lists"},
    )
    assert (config.api.base_url, config.api.page_size) == ("http://127.0.0.1:1/v2", 100)
    assert config.sync.streams == ("lists",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.replace("account_id: acct-1\n", ""), "account_id: required key is missing"),
        (MINIMAL.replace("  raw_path: /tmp/raw\n", ""), "storage.raw_path: required key"),
        (MINIMAL + "api:\n  page_sise: 10\n", "api.page_sise: unknown key"),
        (MINIMAL + "colour: blue\n", "colour: unknown key"),
        (MINIMAL + "api:\n  page_size: ten\n", "api.page_size: expected int, got str"),
        (MINIMAL + "api:\n  requests_per_second: true\n", "api.requests_per_second: expected"),
        (MINIMAL + "api:\n  page_size: 1000\n", "api.page_size: must be between 1 and 250"),
        (MINIMAL + "exports:\n  format: parquet\n", "exports.format: must be 'csv' or 'json'"),
        (MINIMAL.replace("[profiles, lists]", "[profiles, orders]"), "sync.streams: unknown"),
        (MINIMAL.replace("[profiles, lists]", "[email_events]"), "exports.email_events_path"),
        (MINIMAL + "storage2: {}\n", "storage2: unknown key"),
        (MINIMAL.replace("sync:\n", "sync:\n  start_date: soon\n"), "sync.start_date: not a date"),
        (MINIMAL.replace("sync:\n", "sync:\n  lock_lease_seconds: 1\n"), "lease_seconds: must"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_example_and_demo_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    for name in ("example.yaml", "demo.yaml"):
        assert isinstance(load_config(root / "conf" / name), Config)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("2026-11-01", "2026-11-01T00:00:00"),  # a YAML date
        ("2026-11-01T08:30:00", "2026-11-01T08:30:00"),  # a YAML datetime, no offset: UTC
        ("2026-11-01 08:30:00+01:00", "2026-11-01T07:30:00"),  # with an offset
        ('"2026-11-01"', "2026-11-01T00:00:00"),  # quoted text
        ('"2026-11-01T08:30:00Z"', "2026-11-01T08:30:00"),
    ],
)
def test_dates_and_times_are_read_however_they_are_written(
    tmp_path: Path, written: str, read: str
) -> None:
    text = MINIMAL.replace("sync:\n", f"sync:\n  start_date: {written}\n")
    assert load_config(write(tmp_path, text)).sync.start_date == read
    assert (
        load_config(
            write(tmp_path, MINIMAL), {"sync.start_date": written.strip('"')}
        ).sync.start_date
        == read
    )


@pytest.mark.parametrize("written", ["2026-13-01", "11/01/2026", "12", "[2026]"])
def test_a_date_that_cannot_be_read_names_the_key(tmp_path: Path, written: str) -> None:
    text = MINIMAL.replace("sync:\n", f"sync:\n  start_date: {written}\n")
    with pytest.raises(ConfigError, match=r"^sync\.start_date: "):
        load_config(write(tmp_path, text))


def test_one_bucket_cannot_have_two_endpoints(tmp_path: Path) -> None:
    text = MINIMAL.replace("  raw_path: /tmp/raw\n", "  raw_path: s3a://shared/raw\n") + (
        "exports:\n  email_events_path: s3a://shared/exports\n  s3_endpoint: http://127.0.0.1:9\n"
    )
    with pytest.raises(ConfigError, match=r"storage\.raw_path: bucket shared is also in exports"):
        load_config(write(tmp_path, text))


def test_a_retired_key_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config written for an earlier version still loads: ``sync.lock_timeout_minutes``
    (the lock is a lease now) is ignored and named in a warning."""
    text = MINIMAL.replace("sync:\n", "sync:\n  lock_timeout_minutes: 360\n")
    config = load_config(write(tmp_path, text))
    assert config.sync.lock_lease_seconds == 300
    assert [r.getMessage() for r in caplog.records] == [
        "sync.lock_timeout_minutes: no longer used, ignored: the run lock is a lease now "
        "(sync.lock_lease_seconds)"
    ]
