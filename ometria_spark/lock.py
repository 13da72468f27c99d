"""The run lock: one sync per landing zone (and so per set of tables) at a time.

The lock is a numbered series of tickets under ``storage.raw_path``::

    _lock/ticket-000000000001.json   {"owner": run id, "host", "pid", "acquired_at", "expires_at"}
    _lock/ticket-000000000002.json   {"released": true, "owner": ...}

The highest ticket tells who holds the lock: a run, or nobody once it says ``released``. A
run takes the lock by creating the next ticket with an atomic create-if-absent (``O_EXCL``
on a local or mounted path, ``If-None-Match: *`` on S3): of two runs that saw the same
highest ticket, exactly one creates the next and the other is refused. A holder is stale
when its expiry has passed, or when it ran on this host and its process is gone (a crash);
a stale holder is simply superseded by the next ticket. Releasing adds a ``released``
ticket. The new holder deletes the tickets below its own, so numbers only grow and the
highest ticket is never deleted.

Pure Python on the landing storage, not a Delta table: taking and giving back the lock
costs two small writes instead of two Delta commits (seconds each on a cold JVM).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ometria_spark.storage import Storage

log = logging.getLogger(__name__)

LOCK_FOLDER = "_lock"
_TICKET = re.compile(r"^ticket-(\d{12})\.json$")


class SyncLockedError(RuntimeError):
    """Another sync of the same tables is running (or died less than the timeout ago)."""


def _is_stale(holder: dict[str, Any], now: datetime) -> bool:
    if datetime.fromisoformat(str(holder["expires_at"])) < now:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True  # its process is gone: it crashed or was killed
    except PermissionError:
        return False  # alive, owned by another user
    return False


class RunLock:
    """The lock of the landing zone at ``root`` (already a storage path, see ``Landing``)."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.folder = f"{root.rstrip('/')}/{LOCK_FOLDER}"
        self.storage = storage
        self.held: int | None = None

    def _path(self, number: int) -> str:
        return f"{self.folder}/ticket-{number:012d}.json"

    def _tickets(self) -> list[int]:
        names = self.storage.list_names(self.folder)
        return sorted(int(m.group(1)) for m in map(_TICKET.match, names) if m)

    def _read(self, number: int) -> dict[str, Any] | None:
        """The ticket's content; ``None`` if it was deleted meanwhile (a newer one exists)."""
        for attempt in range(2):
            try:
                text = self.storage.read_text(self._path(number))
            except FileNotFoundError:  # both storages raise it for a missing file
                return None
            try:
                value = json.loads(text)
                if isinstance(value, dict):
                    return value
            except ValueError:
                pass
            if attempt == 0:
                time.sleep(1.0)  # a local ticket being written right now: read it again
        # Still not a ticket after a second: its writer died between create and write.
        return {"released": True, "owner": "(unreadable ticket)"}

    def acquire(self, run_id: str, timeout_minutes: int) -> None:
        """Take the lock for ``run_id``, or raise ``SyncLockedError`` saying who holds it."""
        now = datetime.now(UTC)
        tickets = self._tickets()
        top = tickets[-1] if tickets else 0
        holder = self._read(top) if top else None
        if holder is not None and not holder.get("released") and not _is_stale(holder, now):
            acquired = datetime.fromisoformat(str(holder["acquired_at"]))
            raise SyncLockedError(
                f"another sync holds the lock: run {holder.get('owner')} on "
                f"{holder.get('host')} (pid {holder.get('pid')}) since "
                f"{acquired:%Y-%m-%d %H:%M:%S} UTC; it expires after {timeout_minutes} min "
                f"(sync.lock_timeout_minutes). If that run is dead, wait, or delete "
                f"{self._path(top)}"
            )
        mine = {
            "owner": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": now.isoformat(),
            "expires_at": (now + timedelta(minutes=timeout_minutes)).isoformat(),
        }
        if holder is not None and not holder.get("released"):
            log.warning("taking over the lock of run %s (stale)", holder.get("owner"))
        if not self.storage.create_exclusive(self._path(top + 1), json.dumps(mine)):
            raise SyncLockedError(
                "another sync took the lock at the same moment; this run did nothing"
            )
        self.held = top + 1
        for number in tickets:  # the history below our ticket is no longer needed
            try:
                self.storage.delete(self._path(number))
            except Exception as exc:  # best effort: a leftover ticket is harmless
                log.debug("could not delete old lock ticket %d: %s", number, exc)

    def release(self, run_id: str) -> None:
        """Give the lock back (a ``released`` ticket after ours)."""
        if self.held is None:
            return
        released = {"released": True, "owner": run_id, "at": datetime.now(UTC).isoformat()}
        if not self.storage.create_exclusive(self._path(self.held + 1), json.dumps(released)):
            log.warning(
                "run %s: another run took the lock over while this one held it "
                "(it had exceeded sync.lock_timeout_minutes)",
                run_id,
            )
        self.held = None
