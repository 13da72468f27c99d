"""How the list endpoints of Ometria's API are paged: by offset, through a live set of records.

``OffsetPager`` walks one request page by page without skipping records that shift under
it; ``PagingFacts`` is what it learns (and keeps across runs) of endpoints whose paging is
undocumented; ``Page`` is what it yields. It knows nothing of HTTP: it is handed the
client's fetch (one GET with retries, returning a ``Response``). ``client`` re-exports
``Page``, ``PagingFacts`` and the errors (``ometria_spark.errors``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ometria_spark.errors import ApiError

# The pager's warnings keep the logger they were always logged under (the job's log lines
# show it, and log filters may name it).
logger = logging.getLogger("ometria_spark.client")

# Backward re-reads of one request after records shifted under it, without getting any
# further, before it gives up.
MAX_RECOVERIES = 50
# Endpoints whose paging Ometria does not document: the client checks that they honour
# its limit (see ``PagingFacts``). Profiles' paging is documented (limit up to 250).
UNDOCUMENTED_PAGING = frozenset({"list_changes", "unsubscribes"})


@dataclass(frozen=True)
class Page:
    """One response of a list endpoint: the records exactly as returned, and how they were asked.

    ``server_date`` is the response's ``Date`` header (the server's clock, UTC ISO text; None
    if it sent none): cursors are bounded by it. ``repeats`` are the positions of records
    that an earlier page of the same request delivered already, unchanged (re-read on
    purpose, see ``OffsetPager``): readers leave them out.
    """

    endpoint: str
    params: dict[str, str]
    records: list[Any]
    fetched_at: str
    page_number: int
    offset: int
    server_date: str | None = None
    repeats: tuple[int, ...] = ()

    @property
    def fresh(self) -> list[Any]:
        """The records this page delivers: all but the ``repeats``."""
        skip = set(self.repeats)
        return [r for i, r in enumerate(self.records) if i not in skip]


@dataclass(frozen=True)
class Response:
    """One successful GET of a JSON array: its records, when it was fetched (our clock) and
    the server's clock then (its ``Date`` header as UTC ISO text; None if it sent none)."""

    records: list[Any]
    fetched_at: str
    server_date: str | None


# The client's GET of one endpoint with query parameters, retries included.
Fetch = Callable[[str, dict[str, str]], Response]


class PagingFacts:
    """What the client has learned of the paging of endpoints whose paging is undocumented,
    kept across runs (the landing zone stores it): ``cap``, the most records the server
    returns per page whatever the limit; ``honoured``, the largest page it returned.

    A short page (fewer records than the limit) normally ends a request. From a server that
    caps pages below the limit, the first short page would end it early and the rest would
    be lost; so the first time a short page is at least as long as any page seen before, the
    next offset is probed once. Records there mean the server caps pages: its cap is then
    remembered and used as the page size.
    """

    def __init__(
        self,
        known: Mapping[str, Mapping[str, int]] | None = None,
        on_change: Callable[[dict[str, dict[str, int]]], None] | None = None,
    ) -> None:
        self._facts = {kind: dict(values) for kind, values in (known or {}).items()}
        self._on_change = on_change
        self._lock = threading.Lock()

    def cap(self, kind: str) -> int | None:
        return self._facts.get(kind, {}).get("cap")

    def honoured(self, kind: str) -> int:
        return self._facts.get(kind, {}).get("honoured", 0)

    def learn(self, kind: str, *, cap: int | None = None, honoured: int = 0) -> None:
        with self._lock:
            facts = self._facts.setdefault(kind, {})
            before = dict(facts)
            if cap is not None:
                facts["cap"] = cap
            if honoured > facts.get("honoured", 0):
                facts["honoured"] = honoured
            changed = facts != before
            snapshot = self.as_dict()
        if changed and self._on_change is not None:
            self._on_change(snapshot)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {kind: dict(values) for kind, values in self._facts.items()}


def identity(kind: str, record: Any) -> str:
    """What tells a record apart from the others of its request: a profile's id (a profile
    may change between two reads of it), else the record's whole JSON (events don't)."""
    if kind == "profiles" and isinstance(record, dict) and record.get("id") is not None:
        return "id:" + str(record["id"])
    return json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)


def got_params(base_params: dict[str, str], limit: int, offset: int) -> dict[str, str]:
    """The query parameters of one page: ``base_params`` with its ``limit`` and ``offset``."""
    return {**base_params, "limit": str(limit), "offset": str(offset)}


class _Recent:
    """The last ``limit`` records a request delivered, by identity (see ``identity``)."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self._records: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self._records)

    def remember(self, records: list[Any]) -> None:
        for record in records:
            key = identity(self.kind, record)
            self._records.pop(key, None)
            self._records[key] = record
        while len(self._records) > self.limit:
            del self._records[next(iter(self._records))]

    def holds_anchor(self, records: list[Any]) -> bool:
        """Whether ``records`` hold the record delivered last."""
        anchor = next(reversed(self._records))
        return any(identity(self.kind, r) == anchor for r in records)

    def holds_any(self, records: list[Any]) -> bool:
        return any(identity(self.kind, r) in self._records for r in records)

    def repeats(self, records: list[Any]) -> tuple[int, ...]:
        """Positions of records delivered before exactly as they are now."""
        missing = object()
        return tuple(
            i
            for i, r in enumerate(records)
            if self._records.get(identity(self.kind, r), missing) == r
        )


class OffsetPager:
    """One request's pages of ``GET endpoint`` with ``base_params``, by offset (``kind``:
    the request kind, for what is learned about its paging), from ``start_offset``; ``tail``
    holds the last records already delivered when a request is resumed.

    The API pages a live set by offset: a profile deleted (or merged away) before the
    current offset moves every later record one place down, so the next page would skip
    one. So each page after the first starts one record early, on the last record
    delivered, the anchor. Found where it should be: nothing moved. Found later in the
    page: records were inserted before it (those are re-read, harmlessly). Not in the
    page: records before it went away; the request steps back (one record, then twice
    as far, ...) until a page holds one of the records delivered last, and goes on
    after it. Re-reading is harmless (an UPSERT); skipping is not.
    """

    def __init__(
        self,
        fetch: Fetch,
        facts: PagingFacts,
        *,
        kind: str,
        endpoint: str,
        base_params: dict[str, str],
        page_size: int,
        start_offset: int = 0,
        tail: Iterable[Any] = (),
    ) -> None:
        self._fetch = fetch
        self._facts = facts
        self.kind = kind
        self.endpoint = endpoint
        self.base_params = base_params
        cap = facts.cap(kind) if kind in UNDOCUMENTED_PAGING else None
        self.limit = min(page_size, cap) if cap else page_size
        self._recent = _Recent(kind, self.limit)  # the records delivered last, by identity
        self._recent.remember(list(tail))
        self._position = start_offset  # the offset of the first record not delivered yet
        self._page_number = 0
        self._previous: list[Any] | None = None  # the page before, when it was full
        self._stalled = 0  # step-backs since the request last got further than ever before
        self._furthest = start_offset

    def pages(self) -> Iterator[Page]:
        """The request's pages, up to the short page that ends it."""
        while True:
            offset, got = self._read()
            records = got.records
            repeats = self._recent.repeats(records)
            params = got_params(self.base_params, self.limit, offset)
            yield Page(self.endpoint, params, records, got.fetched_at, self._page_number,
                       offset, got.server_date, repeats)  # fmt: skip
            self._delivered(offset, records)
            if not self._goes_on(records, repeats):
                return

    def _read(self) -> tuple[int, Response]:
        """The next page and its offset: read from the anchor, one record early, or from
        further back when records before the anchor went away."""
        position = self._position
        offset = position - 1 if self._recent and position > 0 else position
        got = self._page(offset)
        if self._previous is not None and got.records == self._previous:
            # Stopping here "cleanly" would pass a part of the data off as all of it (and
            # the cursor would then move past the rest): the request fails instead.
            raise ApiError(
                f"{self.endpoint} ignores offset: the page at offset {offset} repeats the page "
                f"before it, so the records after offset {offset} cannot be fetched"
            )
        if offset < position and not self._recent.holds_anchor(got.records):
            # The anchor moved down: records before it were deleted. Step back.
            return self._recover(offset)
        return offset, got

    def _recover(self, offset: int) -> tuple[int, Response]:
        """Step back from ``offset`` (see ``_step_back``), unless the request has done so
        ``MAX_RECOVERIES`` times in a row without getting further: then it fails."""
        self._stalled += 1
        if self._stalled > MAX_RECOVERIES:
            raise ApiError(
                f"{self.endpoint}: the records kept shifting under the pull (deleted while "
                f"it was paged); gave up after {MAX_RECOVERIES} re-reads in a row"
            )
        offset, got = self._step_back(offset)
        logger.warning("%s: records shifted down (deleted during the pull); re-read "
                       "from offset %d", self.endpoint, offset)  # fmt: skip
        return offset, got

    def _step_back(self, offset: int) -> tuple[int, Response]:
        """Re-read from earlier offsets, 1, 2, 4... records back, until a page holds a
        record delivered before (or offset 0 is reached): its offset and the response.

        Every record before a delivered one was delivered too (or arrived after the pull
        passed its place: the next pull's, see the cursor bound), so the request can go on
        after it; stepping back little by little keeps the re-read short (a deletion or
        two moves the records one or two places), and each page mostly new records."""
        step = 1
        while True:
            offset = max(0, offset - step)
            got = self._page(offset)
            if offset == 0 or self._recent.holds_any(got.records):
                return offset, got
            step *= 2

    def _delivered(self, offset: int, records: list[Any]) -> None:
        """Note the page at ``offset`` as delivered: the request has got that far."""
        self._page_number += 1
        self._recent.remember(records)
        self._position = offset + len(records)
        if self._position > self._furthest:
            self._furthest, self._stalled = self._position, 0

    def _goes_on(self, records: list[Any], repeats: tuple[int, ...]) -> bool:
        """Whether the request goes on after the page just delivered (a full page, or a
        short one cut by the server's own cap, whose size is then the page size)."""
        if len(records) > self.limit:
            logger.warning(
                "%s returned %d records for limit %d: the server ignores limit; stopping",
                self.endpoint, len(records), self.limit,
            )  # fmt: skip
            return False
        if len(records) == self.limit:
            if self.kind in UNDOCUMENTED_PAGING:  # a full page: it honours the limit
                self._facts.learn(self.kind, honoured=self.limit)
            self._previous = records
            return True
        # A short page: the end, unless a server that caps pages below the limit cut it.
        if not self._capped(records, fresh=len(records) - len(repeats)):
            return False
        self.limit = len(records)
        self._recent.limit = self.limit
        self._previous = None
        return True

    def _capped(self, records: list[Any], fresh: int) -> bool:
        """True when a short page was cut by the server's own cap (records follow it); the
        cap is then remembered. Probes at most once per page size ever seen."""
        kind, facts = self.kind, self._facts
        if kind not in UNDOCUMENTED_PAGING or fresh <= 0:
            return False
        if facts.cap(kind) is not None or len(records) < facts.honoured(kind):
            # A known cap, or fewer records than the server returned in one page before:
            # the end. (As many as the largest page seen could still be a cap: probed.)
            return False
        probe = self._page(self._position)
        if not probe.records:
            facts.learn(kind, honoured=len(records))
            return False
        logger.warning(
            "%s returned %d records for limit %d, and more after them: the server caps pages "
            "at %d; paging with that size from now on",
            self.endpoint, len(records), self.limit, len(records),
        )  # fmt: skip
        facts.learn(kind, cap=len(records))
        return True

    def _page(self, offset: int) -> Response:
        return self._fetch(self.endpoint, got_params(self.base_params, self.limit, offset))
