"""A run lock holder in its own process, for the lease tests (``tests/test_lock.py``):
``python -m tests.lock_holder ROOT HOST LEASE_SECONDS HOLD_SECONDS``. Takes the lock as
host ``HOST``, prints ``held``, works (sleeps) for ``HOLD_SECONDS`` while its lease is
renewed, then prints what it learned as one JSON line and gives the lock back."""

from __future__ import annotations

import json
import sys
import time

from ometria_spark.lock import LockLostError, RunLock
from ometria_spark.storage import storage_for


def main(root: str, host: str, lease: float, hold: float) -> None:
    lock = RunLock(root, storage_for(root), host=host)
    lock.acquire(f"run-on-{host}", lease)
    print("held", flush=True)
    time.sleep(hold)
    try:
        lock.check()
        outcome = None
    except LockLostError as exc:
        outcome = str(exc)
    print(json.dumps({"lost_to": lock.lost_to, "check": outcome}), flush=True)
    lock.release(f"run-on-{host}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
