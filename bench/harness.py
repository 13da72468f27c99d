"""Shared by the benchmark scripts: a job config against an emulator, and timed job runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "ometria_sync.py"
KEY_ENV = "OMETRIA_BENCH_KEY"


def write_config(
    work: Path,
    base_url: str,
    *,
    streams: list[str],
    rps: float | None = None,
    exports: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A job config under ``work`` (raw pages and path tables there), key from ``KEY_ENV``."""
    api: dict[str, Any] = {"base_url": base_url, "key_env": KEY_ENV}
    if rps is not None:
        api["requests_per_second"] = rps
    data: dict[str, Any] = {
        "account_id": "bench",
        "source_id": "bench",
        "api": api,
        "storage": {"raw_path": f"{work}/raw", "tables_path": f"{work}/tables"},
        "sync": {"streams": streams, "start_date": "2025-06-01"},
    }
    if exports is not None:
        data["exports"] = {"email_events_path": exports, "format": "csv"}
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process; fails loudly if it does not exit 0."""
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{cmd[1:3]} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return seconds


def job(config: Path, *args: str) -> list[str]:
    """The command line of one sync with ``config``."""
    return [sys.executable, str(JOB), "--config", str(config), *args]
