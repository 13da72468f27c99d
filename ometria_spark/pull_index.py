"""The landing zone's index of pulls, so that a run's storage requests do not grow with the
number of earlier runs (a year of hourly runs is 8,760 pull folders per stream).

Layout under ``{raw_path}/{stream}/``::

    _open/{run_id}      a pull was planned and is neither merged nor set aside yet
    _done/{run_id}      a merged pull, kept until raw-page retention deletes it
    _indexed            the two folders cover every pull (written once, after one scan)

``_open/`` is written before the pull's plan and removed after its ``_merged`` (or
``_abandoned``) marker, so a crash between the two leaves an entry whose folder says what
happened, and the entry is tidied by the next run: the index never hides an unmerged pull.
Run ids start with their UTC start time (``20261207T100000Z-...``), so ``_done/`` lists in
age order and retention reads it only up to its cutoff. A landing zone written by an
earlier version (no ``_indexed``) is scanned once and indexed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ometria_spark.storage import Storage

log = logging.getLogger(__name__)

OPEN_INDEX = "_open"
DONE_INDEX = "_done"
INDEXED_MARKER = "_indexed"
PLAN_FILE = "_plan.json"
MERGED_MARKER = "_merged"
ABANDONED_MARKER = "_abandoned"


def run_id_prefix(when: datetime) -> str:
    """The start of every run id begun at ``when`` (run ids sort by start time)."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class PullIndex:
    """The ``_open``/``_done`` entries of each stream under one raw root."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.root = root
        self.storage = storage
        self._checked: set[str] = set()

    def _entry(self, stream: str, index: str, run_id: str) -> str:
        return f"{self.root}/{stream}/{index}/{run_id}"

    def opened(self, stream: str, run_id: str) -> None:
        """A pull is about to be planned (written before its ``_plan.json``)."""
        self.storage.write_text(self._entry(stream, OPEN_INDEX, run_id), "")

    def merged(self, stream: str, run_id: str) -> None:
        """The pull's ``_merged`` marker is written: from open to done."""
        self.storage.write_text(self._entry(stream, DONE_INDEX, run_id), "")
        self.storage.delete(self._entry(stream, OPEN_INDEX, run_id))

    def set_aside(self, stream: str, run_id: str) -> None:
        """The pull's ``_abandoned`` marker is written: never merged, never resumed (its
        folder is kept: retention deletes merged pulls only)."""
        self.storage.delete(self._entry(stream, OPEN_INDEX, run_id))

    def open_runs(self, stream: str) -> list[str]:
        """Run ids of the stream's pulls with a plan that are neither merged nor set aside,
        oldest first. Entries whose folder says otherwise (a crash between the marker and
        the index) are tidied here."""
        self._ensure(stream)
        runs = []
        for run_id in self.storage.list_names(f"{self.root}/{stream}/{OPEN_INDEX}"):
            names = set(self.storage.list_names(f"{self.root}/{stream}/{run_id}"))
            if MERGED_MARKER in names:
                self.merged(stream, run_id)
            elif ABANDONED_MARKER in names:
                self.set_aside(stream, run_id)
            elif PLAN_FILE in names:
                runs.append(run_id)
            # else: the run died between this entry and its plan; nothing was landed, and
            # the entry is left (harmless) rather than raced with a plan being written.
        return runs

    def prune(self, stream: str, older_than: datetime) -> int:
        """Delete the stream's merged pulls that started before ``older_than`` (their
        folders, then their entries); returns how many."""
        self._ensure(stream)
        bound = run_id_prefix(older_than)
        done = f"{self.root}/{stream}/{DONE_INDEX}"
        pruned = 0
        for run_id in self.storage.list_names(done, stop_at=bound):
            self.storage.remove_tree(f"{self.root}/{stream}/{run_id}")
            self.storage.delete(f"{done}/{run_id}")
            pruned += 1
        return pruned

    def _ensure(self, stream: str) -> None:
        """Index a landing zone written before the index existed (one scan, once)."""
        if stream in self._checked:
            return
        marker = f"{self.root}/{stream}/{INDEXED_MARKER}"
        try:
            self.storage.read_text(marker)
        except FileNotFoundError:
            count = 0
            for run_id in self.storage.list_names(f"{self.root}/{stream}"):
                if run_id.startswith("_"):  # the stream's own files and indexes
                    continue
                names = set(self.storage.list_names(f"{self.root}/{stream}/{run_id}"))
                if MERGED_MARKER in names:
                    self.storage.write_text(self._entry(stream, DONE_INDEX, run_id), "")
                elif PLAN_FILE in names and ABANDONED_MARKER not in names:
                    self.storage.write_text(self._entry(stream, OPEN_INDEX, run_id), "")
                count += 1
            self.storage.write_text(marker, "")
            if count:
                log.info("%s: indexed %d pulls of an earlier version's landing zone",
                         stream, count)  # fmt: skip
        self._checked.add(stream)
