"""Benchmark: how close a full profile pull gets to Ometria's per-account rate limit.

Starts the bundled emulator limited to N requests/s (429 above that), pulls every profile
through a client throttled at the same rate, and prints one row per data-set size. With
``--all-streams`` it also runs the whole job (a subprocess) on a first sync of the four API
streams, which share the one budget while Spark merges each stream as its pages land.
Not a test: ``.venv/bin/python bench/extract_rate.py [--profiles 25000] [--all-streams]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ometria_spark.client import OmetriaClient, Throttle
from ometria_spark.emulator import Dataset, EmulatorServer
from ometria_spark.emulator.server import RequestRecord
from ometria_spark.streams import api_streams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import KEY_ENV, job, timed, write_config
from record import append

API_STREAMS = [s.name for s in api_streams()]


def pull_profiles(profiles: int, rps: float, page_size: int) -> dict[str, float]:
    """Pull all profiles of a fresh emulator; return counts and timings."""
    dataset = Dataset.generate(profiles=profiles)
    with EmulatorServer(dataset, requests_per_second=rps) as server:
        client = OmetriaClient(
            server.url, "emulator-key", page_size=page_size, throttle=Throttle(rps)
        )
        with client:
            started = time.monotonic()
            pages = 0
            records = 0
            for page in client.profile_pages():
                pages += 1
                records += len(page.records)
            seconds = time.monotonic() - started
        log = server.request_log
    if records != profiles:
        raise SystemExit(f"pulled {records} profiles, expected {profiles}")
    return {"profiles": records, "pages": pages, "seconds": seconds, **rate_of(log, rps)}


def rate_of(log: list[RequestRecord], rps: float) -> dict[str, float]:
    """Requests, 429s, and the achieved rate over the limit, from the server's log."""
    # N requests spaced 1/rps apart span N-1 intervals: the achieved rate is measured
    # between the first and last arrival, so a perfect client scores exactly 1.0.
    span = log[-1].time - log[0].time if log else 0.0
    rate = (len(log) - 1) / span if span > 0 else float("nan")
    return {
        "requests": len(log),
        "throttled": sum(1 for r in log if r.status == 429),
        "rate": rate,
        "ratio": rate / rps,
    }


def sync_all_streams(profiles: int, rps: float) -> dict[str, float]:
    """A first sync of the four API streams by the job itself; rate from the server's log."""
    key = "bench-key-extract-rate"
    dataset = Dataset.generate(profiles=profiles, start=datetime.now(UTC) - timedelta(hours=1))
    with (
        tempfile.TemporaryDirectory(prefix="ometria-extract-rate-") as work,
        EmulatorServer(dataset, requests_per_second=rps, api_key=key) as server,
    ):
        config = write_config(Path(work), server.url, streams=API_STREAMS, rps=rps)
        seconds = timed(job(config), {**os.environ, KEY_ENV: key})
        log = server.request_log
    pages = sum(1 for r in log if r.status == 200)
    return {"profiles": profiles, "pages": pages, "seconds": seconds, **rate_of(log, rps)}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--profiles", type=int, action="append", help="data-set size (repeatable; default 2500)"
    )
    parser.add_argument("--rps", type=float, default=4.0, help="rate limit, requests/s")
    parser.add_argument("--page-size", type=int, default=250)
    parser.add_argument(
        "--all-streams", action="store_true", help="also time a whole first sync of 4 streams"
    )
    args = parser.parse_args(argv)
    sizes = args.profiles or [2500]
    lines = [
        f"limit {args.rps:g} requests/s, page size {args.page_size}",
        f"{'pull':<22} {'profiles':>9} {'pages':>6} {'requests':>8} {'429s':>5} "
        f"{'seconds':>8} {'req/s':>6} {'ratio':>6}",
    ]
    print("\n".join(lines))
    runs = [("profiles (client)", size) for size in sizes]
    if args.all_streams:
        runs += [("4 API streams (job)", size) for size in sizes]
    for name, size in runs:
        if name.startswith("profiles"):
            row = pull_profiles(size, args.rps, args.page_size)
        else:
            row = sync_all_streams(size, args.rps)
        lines.append(
            f"{name:<22} {row['profiles']:>9} {row['pages']:>6} {row['requests']:>8} "
            f"{row['throttled']:>5} {row['seconds']:>8.2f} {row['rate']:>6.2f} "
            f"{row['ratio']:>6.3f}"
        )
        print(lines[-1])
    append("Extraction efficiency (bench/extract_rate.py)", lines)


if __name__ == "__main__":
    main()
