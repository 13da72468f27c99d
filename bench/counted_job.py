"""Run the job with the file-system calls its Python side makes below a folder counted:
``python bench/counted_job.py ROOT COUNTS_JSON JOB [job arguments...]``.

Counted (when the path is below ROOT): opens, directory listings, stats, renames, removals
and mkdirs, through Python's audit hooks (``os.stat`` has no audit event and is wrapped).
Not counted: what the JVM reads and writes itself (Delta logs, Parquet); on an S3-compatible
server every request is counted at the server instead (``bench/s3_server.py``).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from collections import Counter
from pathlib import Path
from typing import Any

EVENTS = {
    "open": "open",
    "os.listdir": "list",
    "os.scandir": "list",
    "os.rename": "rename",
    "os.remove": "delete",
    "os.rmdir": "delete",
    "os.mkdir": "mkdir",
}


def main() -> None:
    root, out, job, *args = sys.argv[1:]
    counts: Counter[str] = Counter()

    def below(path: Any) -> bool:
        return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(root)

    def hook(event: str, event_args: tuple[Any, ...]) -> None:
        kind = EVENTS.get(event)
        if kind and event_args and below(event_args[0]):
            counts[kind] += 1

    real_stat = os.stat

    def stat(path: Any, *a: Any, **kw: Any) -> os.stat_result:
        if below(path):
            counts["stat"] += 1
        return real_stat(path, *a, **kw)

    sys.addaudithook(hook)
    os.stat = stat
    atexit.register(lambda: Path(out).write_text(json.dumps(counts), encoding="utf-8"))
    sys.argv = [job, *args]
    runpy.run_path(job, run_name="__main__")


if __name__ == "__main__":
    main()
