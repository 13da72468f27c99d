"""The landing zone: raw API pages as JSON files, and the manifest of each pull.

Layout under ``storage.raw_path``::

    {stream}/{run_id}/_plan.json            what this pull fetches (requests, page size)
    {stream}/{run_id}/r0000-p000000-o000000000.json  one page: request index, page number
                                            within the request (fetch order), offset
    {stream}/{run_id}/r0000.done            request 0 fully landed
    {stream}/{run_id}/_digests.json         md5 of every record of a small pull (see below)
    {stream}/{run_id}/_merged               pages merged and the cursor committed
    {stream}/{run_id}/_abandoned            set aside unmerged (planned from stale cursors)
    {stream}/{run_id}/_resumed              half landed by a run that died (see spans_runs)
    {stream}/_last_merged.json              run id, digests and cursors of the newest merge,
                                            and the table version it left
    {stream}/_open/, _done/, _indexed       the index of pulls (``pull_index``)
    _paging.json                            what was learned of the API's paging (caps)

A page file is written whole or not at all (local: write then rename; S3: one PUT), so a
page that exists is complete. A pull whose ``_merged`` marker is missing is resumed by the
next run: requests without ``.done`` continue from their last landed page, then everything
is merged. Supports local paths, ``file:``, ``s3://``/``s3a://`` (boto3) and ``dbfs:/``
(through the ``/dbfs`` mount on Databricks).

Digests make the hourly case cheap: a pull of at most ``MAX_DIGESTS`` records, landed in
one go, records the md5 of each record. When every record of a new pull is one the last
merged pull already held (the lookback re-reads, nothing new), the pull has nothing to
merge and the job skips its Spark work.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ometria_spark.pull_index import (
    ABANDONED_MARKER,
    MERGED_MARKER,
    PLAN_FILE,
    PullIndex,
)
from ometria_spark.storage import Storage, local_root, storage_for

if TYPE_CHECKING:
    from ometria_spark.config import Config

log = logging.getLogger(__name__)

RESUMED_MARKER = "_resumed"
DIGESTS_FILE = "_digests.json"
LAST_MERGED_FILE = "_last_merged.json"
PAGING_FILE = "_paging.json"
MAX_DIGESTS = 20_000
# r0000-p000001-o000000249.json; pulls landed by earlier versions: r0000-o000000000.json
_PAGE = re.compile(r"^r(\d{4})-(?:p(\d{6})-)?o(\d{9})\.json$")


@dataclass(frozen=True)
class Request:
    """One paged API request of a pull: which call, and its arguments."""

    kind: str  # profiles | lists | list_changes | unsubscribes
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    stream: str
    run_id: str
    page_size: int
    requests: tuple[Request, ...]
    cursor_before: str | None = None
    # The committed cursors this pull was planned from (None in plans of older versions):
    # a resumed pull is checked against ``_sync_state`` before it is merged.
    cursors: dict[str, str] | None = None
    # Bad elements met while planning (member_lists: a /lists element that is not a list),
    # quarantined when the pull is merged: {"stream", "request", "reason", "raw"}.
    rejects: tuple[dict[str, str | None], ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Plan:
        data = json.loads(text)
        data["requests"] = tuple(Request(**r) for r in data["requests"])
        data["rejects"] = tuple(data.get("rejects", ()))
        return Plan(**data)


def page_name(request_index: int, sequence: int, offset: int) -> str:
    """A page's file name: sorted by request, then by fetch order within the request (a
    request that steps back re-reads an offset, so offsets neither order nor name pages)."""
    return f"r{request_index:04d}-p{sequence:06d}-o{offset:09d}.json"


@dataclass(frozen=True)
class PageName:
    request: int
    sequence: int  # -1: a page of an earlier version's pull (ordered by offset)
    offset: int

    @staticmethod
    def parse(name: str) -> PageName | None:
        match = _PAGE.match(name)
        if match is None:
            return None
        index, sequence, offset = match.groups()
        return PageName(int(index), -1 if sequence is None else int(sequence), int(offset))


@dataclass(frozen=True)
class ResumePoint:
    """Where an unfinished request continues: the offset, the records landed last (the
    pager's anchor) and the next page's number."""

    offset: int = 0
    tail: tuple[Any, ...] = ()
    sequence: int = 0
    replaces: str | None = None  # a damaged last page that the first page fetched replaces


class Landing:
    """Pulls of the streams under one raw root."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.root = local_root(root).rstrip("/")
        self.storage = storage
        # Read once per run: a run holds the lock, so only this object writes them.
        self._last: dict[str, dict[str, Any] | None] = {}
        self._digests: dict[str, set[str] | None] = {}
        self.index = PullIndex(self.root, storage)

    def folder(self, stream: str, run_id: str) -> str:
        return f"{self.root}/{stream}/{run_id}"

    def save_plan(self, plan: Plan) -> None:
        self.index.opened(plan.stream, plan.run_id)
        self.storage.write_text(
            f"{self.folder(plan.stream, plan.run_id)}/{PLAN_FILE}", plan.to_json()
        )

    def unmerged_plans(self, stream: str) -> list[Plan]:
        """Pulls of this stream that were started but never merged, oldest first (read from
        the index: no listing of every pull ever landed)."""
        return [
            Plan.from_json(self.storage.read_text(f"{self.folder(stream, run_id)}/{PLAN_FILE}"))
            for run_id in self.index.open_runs(stream)
        ]

    def prune(self, streams: list[str], now: datetime, retention_days: int | None) -> None:
        """Raw-page retention: delete the streams' merged pulls older than ``retention_days``
        (never an unmerged or set-aside one; None keeps every pull). Failures are logged."""
        if retention_days is None:
            return
        for stream in streams:
            try:
                pruned = self.index.prune(stream, now - timedelta(days=retention_days))
            except Exception as exc:  # the next run tries again
                log.warning("%s: could not delete old raw pages: %s", stream, exc)
            else:
                if pruned:
                    log.info("%s: deleted %d merged pulls past retention", stream, pruned)

    def write_page(self, plan: Plan, request_index: int, page: dict[str, Any]) -> None:
        """Land one page; ``page["page"]`` is its number within the request."""
        name = page_name(request_index, int(page["page"]), int(page["offset"]))
        text = json.dumps(page, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Half a surrogate pair (an API that cut an emoji in two sent "\ud83d"), which
            # UTF-8 cannot hold: land the page with JSON escapes, as the API sent it.
            text = json.dumps(page, separators=(",", ":"))
        self.storage.write_text(f"{self.folder(plan.stream, plan.run_id)}/{name}", text)

    def replace_page(
        self, plan: Plan, damaged: str, request_index: int, sequence: int, offset: int
    ) -> None:
        """Remove a damaged page once the page fetched again in its place has landed (under
        its own name when the damaged one had an earlier version's name)."""
        if damaged != page_name(request_index, sequence, offset):
            self.storage.delete(f"{self.folder(plan.stream, plan.run_id)}/{damaged}")

    def mark_request_done(self, plan: Plan, request_index: int) -> None:
        self.storage.write_text(
            f"{self.folder(plan.stream, plan.run_id)}/r{request_index:04d}.done", ""
        )

    def note_merged(
        self, plan: Plan, cursors: dict[str, str], target: dict[str, Any] | None = None
    ) -> None:
        """Note the pull as the stream's last merged one: its digests, ``cursors``
        (committed to ``_sync_state`` already) and ``target`` (what the rows were written
        with and into: the table's version after the merge). Then ``mark_merged``."""
        digests = self.digests(plan)
        last = {
            "run_id": plan.run_id,
            "cursors": cursors,
            "target": target,
            "digests": sorted(digests) if digests is not None else None,
        }
        self.storage.write_text(f"{self.root}/{plan.stream}/{LAST_MERGED_FILE}", json.dumps(last))
        self._last[plan.stream] = last

    def mark_merged(self, plan: Plan) -> None:
        """Record the pull as merged: no later run resumes it."""
        self.storage.write_text(f"{self.folder(plan.stream, plan.run_id)}/{MERGED_MARKER}", "")
        self.index.merged(plan.stream, plan.run_id)

    def save_digests(self, plan: Plan, digests: list[str]) -> None:
        folder = self.folder(plan.stream, plan.run_id)
        self.storage.write_text(f"{folder}/{DIGESTS_FILE}", json.dumps(sorted(digests)))
        self._digests[folder] = set(digests)

    def digests(self, plan: Plan) -> set[str] | None:
        """The md5s of every record of the pull, if it recorded them (small, landed whole)."""
        folder = self.folder(plan.stream, plan.run_id)
        if folder not in self._digests:
            try:
                text = self.storage.read_text(f"{folder}/{DIGESTS_FILE}")
            except FileNotFoundError:
                self._digests[folder] = None
            else:
                self._digests[folder] = set(json.loads(text))
        return self._digests[folder]

    def _last_merged(self, stream: str) -> dict[str, Any] | None:
        if stream not in self._last:
            try:
                text = self.storage.read_text(f"{self.root}/{stream}/{LAST_MERGED_FILE}")
                last = json.loads(text)
            except FileNotFoundError:
                last = None
            self._last[stream] = last if isinstance(last, dict) else None
        return self._last[stream]

    def last_merged_digests(self, stream: str) -> set[str] | None:
        """The digests of the stream's newest merged pull, when it recorded them."""
        last = self._last_merged(stream)
        return set(last["digests"]) if last and last.get("digests") is not None else None

    def last_merged_target(self, stream: str) -> dict[str, Any] | None:
        """What the stream's newest merge wrote its rows with and into (see ``mark_merged``)."""
        last = self._last_merged(stream)
        target = last.get("target") if last else None
        return dict(target) if isinstance(target, dict) else None

    def last_merged_cursors(self, stream: str) -> dict[str, str] | None:
        """The cursors committed when the stream's newest pull was merged (a copy of
        ``_sync_state`` to start pulling before Spark has read it; checked against it)."""
        last = self._last_merged(stream)
        return dict(last["cursors"]) if last and last.get("cursors") is not None else None

    def abandon(self, stream: str, run_id: str) -> None:
        """Set a landed pull aside for good: never merged, never resumed."""
        self.storage.write_text(f"{self.folder(stream, run_id)}/{ABANDONED_MARKER}", "")
        self.index.set_aside(stream, run_id)

    def progress(self, plan: Plan) -> tuple[set[int], dict[int, list[str]]]:
        """(indexes of finished requests, {request index: its landed page names, in fetch
        order})."""
        done: set[int] = set()
        pages: dict[int, list[tuple[PageName, str]]] = {}
        for name in self.storage.list_names(self.folder(plan.stream, plan.run_id)):
            if name.endswith(".done"):
                done.add(int(name[1:5]))
            elif (parsed := PageName.parse(name)) is not None:
                pages.setdefault(parsed.request, []).append((parsed, name))
        ordered = {
            index: [n for _, n in sorted(named, key=lambda p: (p[0].sequence, p[0].offset))]
            for index, named in pages.items()
        }
        return done, ordered

    def resume_point(self, plan: Plan, page_names: list[str]) -> ResumePoint:
        """Where an unfinished request continues: after its last landed page."""
        if not page_names:
            return ResumePoint()
        name = page_names[-1]
        parsed = PageName.parse(name)
        assert parsed is not None
        sequence = parsed.sequence + 1 if parsed.sequence >= 0 else len(page_names)
        last = self._page_end(plan, name)
        if last is not None:
            return ResumePoint(*last, sequence)
        # An unreadable last page (emptied or cut short, as a power loss can leave a file):
        # fetch it again, from the end of the page before it (its anchor), or else from its
        # own offset; under its number, so that the new page replaces it.
        again = max(parsed.sequence, len(page_names) - 1)
        before = self._page_end(plan, page_names[-2]) if len(page_names) > 1 else None
        if before is not None:
            return ResumePoint(*before, again, replaces=name)
        return ResumePoint(parsed.offset, (), again, replaces=name)

    def _page_end(self, plan: Plan, name: str) -> tuple[int, tuple[Any, ...]] | None:
        """(the offset after a landed page, its records); None if it is unreadable."""
        try:
            page = json.loads(
                self.storage.read_text(f"{self.folder(plan.stream, plan.run_id)}/{name}")
            )
            if isinstance(page, dict) and isinstance(page.get("records"), list):
                return int(page["offset"]) + len(page["records"]), tuple(page["records"])
        except (ValueError, KeyError, TypeError):  # not JSON: damaged on storage
            pass
        return None

    def spans_runs(self, plan: Plan) -> bool:
        """True when a request of the pull was half landed by a run that died, so that its pages
        were (or will be) fetched by more than one run, maybe a day apart: no one snapshot.
        Profiles are paged by id, not by time, so the newest record of the later pages is no
        bound for the earlier pages' profiles changed meanwhile: such a pull is merged without
        moving the cursor (this run's own pull then starts from the committed one). Noted in
        the pull's folder, for a run that dies again after landing the rest."""
        folder = self.folder(plan.stream, plan.run_id)
        if RESUMED_MARKER in self.storage.list_names(folder):
            return True
        done, pages = self.progress(plan)
        if any(index not in done for index in pages):
            self.storage.write_text(f"{folder}/{RESUMED_MARKER}", "")
            return True
        return False

    def early_cursors(self, streams: list[str]) -> dict[str, dict[str, str]]:
        """The cursors every stream's last merge recorded, if all have them and no pull of any
        of them waits to be merged (that would need the client first); else nothing."""
        early = {}
        for stream in streams:
            recorded = self.last_merged_cursors(stream)
            if recorded is None or self.unmerged_plans(stream):
                return {}
            early[stream] = recorded
        return early

    def paging_facts(self) -> dict[str, dict[str, int]]:
        """What earlier runs learned of the API's paging (see ``client.PagingFacts``)."""
        try:
            facts = json.loads(self.storage.read_text(f"{self.root}/{PAGING_FILE}"))
        except (FileNotFoundError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

    def save_paging_facts(self, facts: dict[str, dict[str, int]]) -> None:
        self.storage.write_text(f"{self.root}/{PAGING_FILE}", json.dumps(facts, sort_keys=True))

    def page_paths(self, plan: Plan) -> list[str]:
        """Spark-readable paths of every landed page of a pull."""
        folder = self.folder(plan.stream, plan.run_id)
        _, pages = self.progress(plan)
        return [
            self.storage.spark_path(f"{folder}/{name}")
            for names in pages.values()
            for name in names
        ]


def landing_for(config: Config) -> Landing:
    """The landing zone of a configuration: ``storage.raw_path`` on its storage."""
    raw = config.storage.raw_path
    return Landing(raw, storage_for(raw, config.storage.s3_endpoint, config.storage.s3_region))
