"""Run the Ometria emulator in the foreground until SIGTERM or SIGINT.

    python -m ometria_spark.emulator --port 0 --profiles 2500 --seed 7 [--rps 4]
        [--exports-dir DIR]

Prints ``OMETRIA_EMULATOR_URL=<url>`` once the server is listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import export_files, write_local
from ometria_spark.emulator.server import EmulatorServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m ometria_spark.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--profiles", type=int, default=2500, help="number of profiles")
    parser.add_argument("--lists", type=int, default=6, help="number of lists")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the data set")
    parser.add_argument("--rps", type=float, default=None, help="rate limit (requests/s)")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    parser.add_argument("--api-key", default="emulator-key", help="the key the server accepts")
    parser.add_argument("--exports-dir", type=Path, default=None, help="write export files here")
    parser.add_argument("--exports-format", choices=["csv", "json"], default="csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until told to stop; return the exit status."""
    args = parse_args(argv)
    dataset = Dataset.generate(seed=args.seed, profiles=args.profiles, lists=args.lists)
    if args.exports_dir is not None:
        files = export_files(dataset.email_events, fmt=args.exports_format)
        write_local(args.exports_dir, files)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = EmulatorServer(
        dataset,
        api_key=args.api_key,
        requests_per_second=args.rps,
        retry_after=args.retry_after,
        port=args.port,
    )
    with server:
        print(f"OMETRIA_EMULATOR_URL={server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
