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
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ometria_spark.emulator import Dataset, EmulatorServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import KEY_ENV, job, timed, write_config
from record import append

KEY = "bench-key-small-run"
# The same session the job builds for local paths (Delta's jars, not hadoop-aws's).
SESSION_ONLY = "from ometria_spark.spark import get_spark; get_spark(s3a=False).stop()"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed no-change runs")
    parser.add_argument("--profiles", type=int, default=2500)
    parser.add_argument("--rps", type=float, default=4.0, help="the emulator's rate limit")
    parser.add_argument(
        "--streams", default="lists,profiles,member_lists,unsubscribes", help="API streams"
    )
    args = parser.parse_args(argv)
    env = {**os.environ, KEY_ENV: KEY}
    with (
        tempfile.TemporaryDirectory(prefix="ometria-small-run-") as work,
        EmulatorServer(
            # An account whose data runs up to now, as in the hourly case (one unsubscribe
            # window, not one per month since the emulator's default start date).
            Dataset.generate(profiles=args.profiles, start=datetime.now(UTC) - timedelta(hours=1)),
            requests_per_second=args.rps,
            api_key=KEY,
        ) as server,
    ):
        config = write_config(Path(work), server.url, streams=args.streams.split(","), rps=args.rps)
        first = timed(job(config), env)
        session = [timed([sys.executable, "-c", SESSION_ONLY], env) for _ in range(args.runs)]
        server.reset_log()
        idle = [timed(job(config), env) for _ in range(args.runs)]
        requests = len(server.request_log) / args.runs

    idle_median, session_median = statistics.median(idle), statistics.median(session)
    lines = [
        f"streams: {args.streams}; {args.profiles} profiles; limit {args.rps:g} requests/s; "
        f"medians of {args.runs} runs",
        f"{'phase':<34} {'seconds':>8}",
        f"{'first (full) sync, whole process':<34} {first:>8.1f}",
        f"{'no-change sync, whole process':<34} {idle_median:>8.1f}",
        f"{'  of which JVM + session start':<34} {session_median:>8.1f}",
        f"{'  of which the sync itself':<34} {idle_median - session_median:>8.1f}",
        f"API requests per no-change run: {requests:.0f}",
        f"no-change runs: {', '.join(f'{s:.1f}' for s in idle)} s",
    ]
    print("\n".join(lines))
    append("Small run: an hourly sync with nothing new (bench/small_run.py)", lines)


if __name__ == "__main__":
    main()
