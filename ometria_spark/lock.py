"""The run lock: one sync per landing zone (and so per set of tables) at a time.

The lock is a numbered series of tickets under ``storage.raw_path``::

    _lock/ticket-000000000001.json   {"owner": run id, "host", "pid", "acquired_at",
                                      "lease_seconds", "expires_at"}
    _lock/ticket-000000000002.json   {"released": true, "owner": ...}

The highest ticket tells who holds the lock: a run, or nobody once it says ``released``. A
run takes the lock by creating the next ticket with an atomic create-if-absent (``O_EXCL``
on a local or mounted path, ``If-None-Match: *`` on S3): of two runs that saw the same
highest ticket, exactly one creates the next and the other is refused. The new holder
deletes the tickets below its own, so numbers only grow and the highest ticket is never
deleted. Releasing adds a ``released`` ticket.

A lease, not a timeout: while it runs, the holder's thread writes its ticket again every
third of ``sync.lock_lease_seconds`` with a new ``expires_at``. A holder whose lease has
lapsed is stale whatever host wrote it (a killed driver, a lost cluster), and so is one on
this host whose process is gone; a stale holder is simply superseded by the next ticket.
A killed run therefore blocks the next one for at most the lease, and a run that renews is
never taken over however long it works. Should a holder miss its renewals for a whole lease
(a stalled driver) and be taken over, its next renewal sees the newer ticket: the run stops
before its next cursor commit (``check``). Hosts' clocks are assumed to agree to well within
the lease (NTP).

Pure Python on the landing storage, not a Delta table: taking and giving back the lock
costs two small writes instead of two Delta commits (seconds each on a cold JVM).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ometria_spark.storage import Storage

log = logging.getLogger(__name__)

LOCK_FOLDER = "_lock"
_TICKET = re.compile(r"^ticket-(\d{12})\.json$")


class SyncLockedError(RuntimeError):
    """Another sync of the same tables is running (or died less than a lease ago)."""


class LockLostError(SyncLockedError):
    """This run's lease lapsed and another run took the lock over."""


def _is_stale(holder: dict[str, Any], now: datetime, host: str) -> bool:
    if datetime.fromisoformat(str(holder["expires_at"])) < now:
        return True  # its lease lapsed: nobody renewed it, whatever host it is on
    if holder.get("host") != host:
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True  # its process is gone: it crashed or was killed
    except PermissionError:
        return False  # alive, owned by another user
    return False


class RunLock:
    """The lock of the landing zone at ``root`` (already a storage path, see ``Landing``).
    ``host`` names this machine in the tickets (default: its host name)."""

    def __init__(self, root: str, storage: Storage, host: str | None = None) -> None:
        self.folder = f"{root.rstrip('/')}/{LOCK_FOLDER}"
        self.storage = storage
        self.host = host or socket.gethostname()
        self.held: int | None = None
        self._ticket: dict[str, Any] = {}
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.lost_to: str | None = None  # who took the lock over, once a renewal saw it

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

    def acquire(self, run_id: str, lease_seconds: float) -> None:
        """Take the lock for ``run_id`` and keep renewing its lease until ``release``, or
        raise ``SyncLockedError`` saying who holds it."""
        self._stop_keeping()  # (a lock object taken over and used again)
        now = datetime.now(UTC)
        tickets = self._tickets()
        top = tickets[-1] if tickets else 0
        holder = self._read(top) if top else None
        if holder is not None and not holder.get("released"):
            if not _is_stale(holder, now, self.host):
                raise SyncLockedError(_held_message(holder, self._path(top)))
            log.warning(
                "taking over the lock of run %s on %s: its lease lapsed at %s (or its process "
                "is gone)", holder.get("owner"), holder.get("host"), holder.get("expires_at")
            )  # fmt: skip
        self._ticket = {
            "owner": run_id,
            "host": self.host,
            "pid": os.getpid(),
            "acquired_at": now.isoformat(),
            "lease_seconds": lease_seconds,
            "expires_at": (now + timedelta(seconds=lease_seconds)).isoformat(),
        }
        if not self.storage.create_exclusive(self._path(top + 1), json.dumps(self._ticket)):
            raise SyncLockedError(
                "another sync took the lock at the same moment; this run did nothing"
            )
        self.held = top + 1
        self.lost_to = None
        for number in tickets:  # the history below our ticket is no longer needed
            try:
                self.storage.delete(self._path(number))
            except Exception as exc:  # best effort: a leftover ticket is harmless
                log.debug("could not delete old lock ticket %d: %s", number, exc)
        self._stop.clear()
        self._keeper = threading.Thread(
            target=self._keep, args=(lease_seconds,), name="ometria-lock-lease", daemon=True
        )
        self._keeper.start()

    def _keep(self, lease_seconds: float) -> None:
        """Renew the lease every third of it until released or taken over."""
        while not self._stop.wait(lease_seconds / 3):
            try:
                if not self.renew(lease_seconds):
                    return
            except Exception as exc:  # a storage hiccup: the next beat tries again
                log.warning("could not renew the run lock's lease: %s", exc)

    def renew(self, lease_seconds: float) -> bool:
        """Write this run's ticket again with a new expiry; False (and ``lost_to`` set) when
        a newer ticket shows that another run took the lock over."""
        if self.held is None:
            return False
        newer = self._read(self.held + 1)
        if newer is not None:
            self.lost_to = str(newer.get("owner"))
            log.error("run %s lost the lock to run %s: its lease had lapsed",
                      self._ticket.get("owner"), self.lost_to)  # fmt: skip
            return False
        expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        self._ticket = {**self._ticket, "expires_at": expires.isoformat()}
        self.storage.write_text(self._path(self.held), json.dumps(self._ticket))
        return True

    def _stop_keeping(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None

    def check(self) -> None:
        """Raise ``LockLostError`` if a renewal found the lock taken over (called before each
        cursor commit: the run that now holds it owns the cursors)."""
        if self.lost_to is not None:
            raise LockLostError(
                f"this run's lock lease lapsed and run {self.lost_to} took the lock over; "
                "stopped before committing cursors (sync.lock_lease_seconds)"
            )

    def release(self, run_id: str) -> None:
        """Stop renewing and give the lock back (a ``released`` ticket after ours)."""
        self._stop_keeping()
        if self.held is None:
            return
        released = {"released": True, "owner": run_id, "at": datetime.now(UTC).isoformat()}
        if not self.storage.create_exclusive(self._path(self.held + 1), json.dumps(released)):
            log.warning(
                "run %s: another run took the lock over while this one held it (its lease "
                "had lapsed: sync.lock_lease_seconds)",
                run_id,
            )
        self.held = None


def _held_message(holder: dict[str, Any], path: str) -> str:
    acquired = datetime.fromisoformat(str(holder["acquired_at"]))
    expires = datetime.fromisoformat(str(holder["expires_at"])).astimezone(UTC)
    return (
        f"another sync holds the lock: run {holder.get('owner')} on {holder.get('host')} "
        f"(pid {holder.get('pid')}) since {acquired:%Y-%m-%d %H:%M:%S} UTC; its lease runs "
        f"to {expires:%H:%M:%S} UTC and is renewed while it runs (sync.lock_lease_seconds). "
        f"If that run is dead, the next run after then takes the lock over (or delete {path})"
    )
