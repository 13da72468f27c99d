"""The landing zone: raw API pages as JSON files, and the manifest of each pull.

Layout under ``storage.raw_path``::

    {stream}/{run_id}/_plan.json            what this pull fetches (requests, page size)
    {stream}/{run_id}/r0000-p000000-o000000000.json  one page: request index, page number
                                            within the request (fetch order), offset
    {stream}/{run_id}/r0000.done            request 0 fully landed
    {stream}/{run_id}/_digests.json         md5 of every record of a small pull (see below)
    {stream}/{run_id}/_merged               pages merged and the cursor committed
    {stream}/{run_id}/_abandoned            set aside unmerged (planned from stale cursors)
    {stream}/{run_id}/_resumed              half landed by a run that died (see sync.py)
    {stream}/_last_merged.json              run id, digests and cursors of the newest merge,
                                            and the table version it left
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

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ometria_spark.crash import crash_point

PLAN_FILE = "_plan.json"
MERGED_MARKER = "_merged"
ABANDONED_MARKER = "_abandoned"
DIGESTS_FILE = "_digests.json"
LAST_MERGED_FILE = "_last_merged.json"
PAGING_FILE = "_paging.json"
MAX_DIGESTS = 20_000
# r0000-p000001-o000000249.json; pulls landed by earlier versions: r0000-o000000000.json
_PAGE = re.compile(r"^r(\d{4})-(?:p(\d{6})-)?o(\d{9})\.json$")


class Storage(Protocol):
    def write_text(self, path: str, text: str) -> None: ...
    def read_text(self, path: str) -> str: ...
    def create_exclusive(self, path: str, text: str) -> bool: ...
    def delete(self, path: str) -> None: ...
    def list_names(self, folder: str) -> list[str]: ...
    def list_tree(self, folder: str) -> list[str]: ...
    def remove_tree(self, folder: str) -> bool: ...
    def spark_path(self, path: str) -> str: ...


class LocalStorage:
    """A local folder (or the /dbfs mount)."""

    def __init__(self, spark_prefix: str = "") -> None:
        # dbfs:/x is /dbfs/x to Python and dbfs:/x to Spark.
        self._spark_prefix = spark_prefix

    def write_text(self, path: str, text: str) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)

    def read_text(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create ``path`` with ``text`` unless it exists (atomic: ``O_EXCL``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return True

    def delete(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def list_names(self, folder: str) -> list[str]:
        base = Path(folder)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith(".tmp-"))

    def list_tree(self, folder: str) -> list[str]:
        """Every file below ``folder``, as paths relative to it."""
        base = Path(folder)
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def remove_tree(self, folder: str) -> bool:
        """Delete ``folder`` and all below it; False if there was none."""
        if not Path(folder).exists():
            return False
        shutil.rmtree(folder)
        return True

    def spark_path(self, path: str) -> str:
        if self._spark_prefix:
            return self._spark_prefix + path.removeprefix("/dbfs")
        return "file://" + str(Path(path).resolve())


class S3Storage:
    """An S3 (or S3-compatible) prefix, through boto3."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        import boto3

        self._client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parsed = urlparse(path)
        return parsed.netloc, parsed.path.lstrip("/")

    def write_text(self, path: str, text: str) -> None:
        bucket, key = self._split(path)
        self._client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))

    def read_text(self, path: str) -> str:
        """The object's text; ``FileNotFoundError`` when there is none (as locally)."""
        bucket, key = self._split(path)
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self._client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(path) from exc
        return str(body.decode("utf-8"))

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create ``path`` unless it exists (an S3 conditional write, ``If-None-Match: *``)."""
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            self._client.put_object(
                Bucket=bucket, Key=key, Body=text.encode("utf-8"), IfNoneMatch="*"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def delete(self, path: str) -> None:
        bucket, key = self._split(path)
        self._client.delete_object(Bucket=bucket, Key=key)

    def list_names(self, folder: str) -> list[str]:
        bucket, key = self._split(folder.rstrip("/") + "/")
        names: set[str] = set()
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
            names.update(o["Key"][len(key) :] for o in page.get("Contents", []))
            names.update(
                p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", [])
            )
        return sorted(names)

    def list_tree(self, folder: str) -> list[str]:
        bucket, key = self._split(folder.rstrip("/") + "/")
        paginator = self._client.get_paginator("list_objects_v2")
        return sorted(
            o["Key"][len(key) :]
            for page in paginator.paginate(Bucket=bucket, Prefix=key)
            for o in page.get("Contents", [])
        )

    def remove_tree(self, folder: str) -> bool:
        names = self.list_tree(folder)
        for name in names:
            self.delete(f"{folder.rstrip('/')}/{name}")
        return bool(names)

    def spark_path(self, path: str) -> str:
        return "s3a://" + path.split("://", 1)[1]


def storage_for(root: str, s3_endpoint: str | None = None, region: str | None = None) -> Storage:
    """The storage behind a ``storage.raw_path`` value."""
    if root.startswith(("s3://", "s3a://")):
        return _s3_storage(s3_endpoint, region)
    if root.startswith("dbfs:/"):
        return LocalStorage(spark_prefix="dbfs:")
    return LocalStorage()


@functools.lru_cache(maxsize=8)
def _s3_storage(endpoint: str | None, region: str | None) -> S3Storage:
    # One boto3 client per endpoint for the process (clients are thread-safe, and slow to make).
    return S3Storage(endpoint, region)


def local_root(root: str) -> str:
    """``dbfs:/x`` -> ``/dbfs/x``; ``file:///x`` -> ``/x``; others unchanged."""
    if root.startswith("dbfs:/"):
        return "/dbfs/" + root.removeprefix("dbfs:/").lstrip("/")
    if root.startswith("file:"):
        return urlparse(root).path
    return root


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

    def folder(self, stream: str, run_id: str) -> str:
        return f"{self.root}/{stream}/{run_id}"

    def save_plan(self, plan: Plan) -> None:
        self.storage.write_text(
            f"{self.folder(plan.stream, plan.run_id)}/{PLAN_FILE}", plan.to_json()
        )

    def unmerged_plans(self, stream: str) -> list[Plan]:
        """Pulls of this stream that were started but never merged, oldest first."""
        plans = []
        for run_id in self.storage.list_names(f"{self.root}/{stream}"):
            if run_id.startswith("_"):  # the stream's own files, not a pull
                continue
            folder = self.folder(stream, run_id)
            names = self.storage.list_names(folder)
            if PLAN_FILE in names and not {MERGED_MARKER, ABANDONED_MARKER} & set(names):
                plans.append(Plan.from_json(self.storage.read_text(f"{folder}/{PLAN_FILE}")))
        return plans

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

    def mark_merged(
        self, plan: Plan, cursors: dict[str, str], target: dict[str, Any] | None = None
    ) -> None:
        """Record the pull as merged: its digests become the stream's last merged ones, and
        ``cursors`` (committed to ``_sync_state`` already) and ``target`` (what the rows were
        written with and into: the table's version after the merge) are noted beside them."""
        folder = self.folder(plan.stream, plan.run_id)
        digests = self.digests(plan)
        last = {
            "run_id": plan.run_id,
            "cursors": cursors,
            "target": target,
            "digests": sorted(digests) if digests is not None else None,
        }
        self.storage.write_text(f"{self.root}/{plan.stream}/{LAST_MERGED_FILE}", json.dumps(last))
        self._last[plan.stream] = last
        crash_point(f"last-merged:{plan.stream}")
        self.storage.write_text(f"{folder}/{MERGED_MARKER}", "")

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
