"""Benchmark: the hourly case, an incremental sync with nothing new, from process start to exit.

Starts the emulator (in this process, on loopback), runs the job once as a subprocess to
fill the tables, then times further runs of the job with nothing new, whole process wall
time, as a scheduler sees it. It also times a process that only starts the Spark session
and exits, to show how much of the hourly run is JVM and session start-up.
Not a test: ``.venv/bin/python bench/small_run.py [--runs 3] [--streams lists,profiles]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ometria_spark.emulator import Dataset, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-small-run"
SESSION_ONLY = "from ometria_spark.spark import get_spark; get_spark().stop()"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one process; fails loudly if it does not exit 0."""
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{cmd[1:3]} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed no-change runs")
    parser.add_argument("--profiles", type=int, default=2500)
    parser.add_argument(
        "--streams", default="lists,profiles,member_lists,unsubscribes", help="API streams"
    )
    args = parser.parse_args(argv)
    env = {**os.environ, "OMETRIA_BENCH_KEY": KEY}
    with (
        tempfile.TemporaryDirectory(prefix="ometria-small-run-") as work,
        EmulatorServer(Dataset.generate(profiles=args.profiles), api_key=KEY) as server,
    ):
        config = Path(work) / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "account_id": "bench",
                    "source_id": "bench",
                    "api": {"base_url": server.url, "key_env": "OMETRIA_BENCH_KEY"},
                    "storage": {"raw_path": f"{work}/raw", "tables_path": f"{work}/tables"},
                    "sync": {"streams": args.streams.split(","), "start_date": "2025-06-01"},
                }
            ),
            encoding="utf-8",
        )
        job = [sys.executable, str(ROOT / "jobs" / "ometria_sync.py"), "--config", str(config)]
        first = timed(job, env)
        session = [timed([sys.executable, "-c", SESSION_ONLY], env) for _ in range(args.runs)]
        server.reset_log()
        idle = [timed(job, env) for _ in range(args.runs)]
        requests = len(server.request_log) / args.runs

    idle_median, session_median = statistics.median(idle), statistics.median(session)
    print(f"streams: {args.streams}; {args.profiles} profiles; medians of {args.runs} runs")
    print(f"{'phase':<34} {'seconds':>8}")
    print(f"{'first (full) sync, whole process':<34} {first:>8.1f}")
    print(f"{'no-change sync, whole process':<34} {idle_median:>8.1f}")
    print(f"{'  of which JVM + session start':<34} {session_median:>8.1f}")
    print(f"{'  of which the sync itself':<34} {idle_median - session_median:>8.1f}")
    print(f"API requests per no-change run: {requests:.0f}")


if __name__ == "__main__":
    main()
