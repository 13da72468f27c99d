"""Benchmark: how close a full profile pull gets to Ometria's per-account rate limit.

Starts the bundled emulator limited to N requests/s (429 above that), pulls every profile
through a client throttled at the same rate, and prints one row per data-set size.
Not a test: run it by hand, ``.venv/bin/python bench/extract_rate.py [--profiles 25000]``.
"""

from __future__ import annotations

import argparse
import time

from ometria_spark.client import OmetriaClient, Throttle
from ometria_spark.emulator import Dataset, EmulatorServer


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
    requests = len(log)
    # N requests spaced 1/rps apart span N-1 intervals: the achieved rate is measured
    # between the first and last arrival, so a perfect client scores exactly 1.0.
    span = log[-1].time - log[0].time
    rate = (requests - 1) / span if span > 0 else float("nan")
    return {
        "profiles": records,
        "pages": pages,
        "requests": requests,
        "throttled": sum(1 for r in log if r.status == 429),
        "seconds": seconds,
        "rate": rate,
        "ratio": rate / rps,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--profiles", type=int, action="append", help="data-set size (repeatable; default 2500)"
    )
    parser.add_argument("--rps", type=float, default=4.0, help="rate limit, requests/s")
    parser.add_argument("--page-size", type=int, default=250)
    args = parser.parse_args(argv)
    sizes = args.profiles or [2500]
    header = (
        f"{'profiles':>9} {'pages':>6} {'requests':>8} {'429s':>5} {'seconds':>8} "
        f"{'req/s':>6} {'ratio':>6}"
    )
    print(f"limit {args.rps:g} requests/s, page size {args.page_size}")
    print(header)
    for size in sizes:
        row = pull_profiles(size, args.rps, args.page_size)
        print(
            f"{row['profiles']:>9} {row['pages']:>6} {row['requests']:>8} {row['throttled']:>5} "
            f"{row['seconds']:>8.2f} {row['rate']:>6.2f} {row['ratio']:>6.3f}"
        )


if __name__ == "__main__":
    main()
