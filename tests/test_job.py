"""The job as users run it: a separate process, its exit status and its one-line errors.

Each case runs `jobs/ometria_sync.py` in a subprocess against the emulator over loopback.
Kills at exact phases and reruns (which this file held once) are the crash chain of
``tests/reliability/test_crash_points.py``: it covers each phase this file killed at
(``landed:``, ``merged:``, ``after:`` of profiles), a rerun in another time zone and the
printed summary, and checks more after each kill.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from tests.conftest import INTERPRETED
from tests.test_sync import ACCOUNT, KEY, SOURCE

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ["lists", "profiles", "member_lists"]
# Short-lived JVMs: C1-only JIT starts faster, and these runs are too short for C2 to pay;
# the serial collector starts no GC threads to compete with the other pytest worker. Spark
# settings given as system properties (SparkConf reads ``-Dspark.*``): see INTERPRETED.
JVM_FLAGS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
FAST_JVM = " ".join([JVM_FLAGS, *(f"-D{key}={value}" for key, value in INTERPRETED.items())])


@pytest.fixture()
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Dataset.generate(seed=5, profiles=450, lists=2), api_key=KEY) as server:
        yield server


def write_config(tmp_path: Path, server: EmulatorServer) -> Path:
    path = tmp_path / "sync.yaml"
    config = {
        "account_id": ACCOUNT,
        "source_id": SOURCE,
        "api": {"base_url": server.url, "key_env": "OMETRIA_TEST_KEY", "page_size": 100,
                "requests_per_second": 200, "max_attempts": 2},
        "storage": {"raw_path": str(tmp_path / "raw"), "tables_path": str(tmp_path / "t")},
        "sync": {"streams": STREAMS, "start_date": "2025-06-01"},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def sync(
    config: Path,
    *,
    key: str = KEY,
    crash_at: str | None = None,
    crash_delay: float | None = None,
    tz: str = "UTC",
    streams: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMETRIA_TEST_KEY": key,
        "OMETRIA_SPARK_MASTER": "local[2]",
        "JAVA_TOOL_OPTIONS": FAST_JVM,
        "TZ": tz,  # the machine's zone must not leak into timestamps or cursors
    }
    env.pop("OMETRIA_SPARK_CRASH_AT", None)
    env.pop("OMETRIA_SPARK_CRASH_DELAY", None)
    if crash_at:
        env["OMETRIA_SPARK_CRASH_AT"] = crash_at
    if crash_delay is not None:
        env["OMETRIA_SPARK_CRASH_DELAY"] = str(crash_delay)
    command = [sys.executable, str(ROOT / "jobs" / "ometria_sync.py"), "--config", str(config)]
    return subprocess.run(
        command + (["--streams", streams] if streams else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_refused_key_exits_non_zero_with_one_clear_line(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    config_path = write_config(tmp_path, emulator)
    wrong = "wrong-key-7c1d9e"
    result = sync(config_path, key=wrong)
    assert result.returncode == 1
    reasons = [line for line in result.stderr.splitlines() if line.startswith("ometria-sync:")]
    assert len(reasons) == 1
    assert "refused" in reasons[0].lower()
    assert wrong not in result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr


def test_bad_config_exits_2_before_starting_spark(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "account_id: a\nsource_id: s\nstorage: {raw_path: /tmp/x}\napi: {pagesize: 5}\n"
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "ometria_sync.py"), "--config", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "api.pagesize: unknown key" in result.stderr
