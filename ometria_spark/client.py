"""Client for Ometria's REST Data API (v2): auth, throttle, retries and paging.

It returns pages of raw JSON records and knows nothing of Spark. The API key lives only in
the session's request header; it never appears in a repr, a log record or an exception.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

AUTH_HEADER = "X-Ometria-Auth"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
DEFAULT_REQUESTS_PER_SECOND = 4.0
# Backward re-reads of one request after records shifted under it, without getting any
# further, before it gives up.
MAX_RECOVERIES = 50
# Endpoints whose paging Ometria does not document: the client checks that they honour
# its limit (see ``PagingFacts``). Profiles' paging is documented (limit up to 250).
UNDOCUMENTED_PAGING = frozenset({"list_changes", "unsubscribes"})


class OmetriaError(Exception):
    """Base class of every error raised by this client."""


class AuthError(OmetriaError):
    """The server refused the API key (HTTP 401 or 403)."""


class NotFoundError(OmetriaError):
    """The requested object does not exist (HTTP 404)."""


class ApiError(OmetriaError):
    """Retries exhausted, an unexpected status, or a body that is not a JSON array."""


def check_api_key(api_key: str) -> str:
    """The key without surrounding whitespace; ``OmetriaError`` (never showing the key)
    unless it is one line of printable ASCII, as an HTTP header value must be."""
    # Secret stores and env files often keep a final newline; requests would refuse such a
    # header with an error quoting its value, the key.
    key = api_key.strip()
    if not key:
        raise OmetriaError("the Ometria API key is empty")
    if not all(" " <= c <= "~" for c in key):
        raise OmetriaError(
            "the Ometria API key is not one line of printable text (it holds a line break, a "
            "control or a non-ASCII character): check the secret; its value is not shown"
        )
    return key


def api_key_from_env(env_name: str) -> str:
    """Return the API key held in environment variable ``env_name``.

    Raises ``OmetriaError`` naming the variable (never a value) when it is unset or empty.
    """
    value = os.environ.get(env_name, "")
    if not value:
        raise OmetriaError(f"environment variable {env_name} holding the Ometria API key is unset")
    return value


class Throttle:
    """Spaces request starts at least ``1 / requests_per_second`` apart, across threads.

    One instance is shared by every stream of an account, since the rate limit is per account.
    """

    def __init__(self, requests_per_second: float) -> None:
        if requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")
        self.requests_per_second = requests_per_second
        self._interval = 1.0 / requests_per_second
        self._lock = threading.Lock()
        self._next_start = 0.0

    def wait(self) -> float:
        """Block until this caller may start its request; return the booked start
        (``time.monotonic()``), never later than the return itself."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            # Slots are booked from the schedule, not from when a sleeper wakes, so sleep
            # overshoot does not accumulate and a long pull stays at the full rate.
            self._next_start = start + self._interval
        if start > now:
            time.sleep(start - now)
        return start

    def __repr__(self) -> str:
        return f"Throttle(requests_per_second={self.requests_per_second})"


@dataclass(frozen=True)
class Page:
    """One response of a list endpoint: the records exactly as returned, and how they were asked.

    ``server_date`` is the response's ``Date`` header (the server's clock, UTC ISO text; None
    if it sent none): cursors are bounded by it. ``repeats`` are the positions of records
    that an earlier page of the same request delivered already, unchanged (re-read on
    purpose, see ``OmetriaClient.paged``): readers leave them out.
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
    records: list[Any]
    fetched_at: str
    server_date: str | None


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


def _http_date(header: str | None) -> str | None:
    """An HTTP ``Date`` header -> UTC ``YYYY-MM-DDTHH:MM:SSZ``; None if absent or unreadable."""
    if not header:
        return None
    try:
        moment = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Retryable(Exception):
    """One failed attempt that may succeed if repeated."""

    def __init__(self, status: int | None, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class OmetriaClient:
    """A small client of the Ometria v2 API that yields pages of records.

    Retries are a loop around single attempts rather than urllib3's ``Retry`` mounted on the
    adapter: urllib3 would repeat requests without passing through the shared ``Throttle``
    (breaking the account's rate budget) and cannot retry a 200 with a truncated body.
    ``Retry`` still parses ``Retry-After``. The wait is our own capped exponential back-off
    with full jitter, because urllib3's jitter is additive and its first retry waits zero.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        page_size: int = 250,
        timeout: float = 30.0,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_wait: float = 300.0,
        throttle: Throttle | None = None,
        paging: PagingFacts | None = None,
    ) -> None:
        api_key = check_api_key(api_key)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait
        self.throttle = throttle or Throttle(DEFAULT_REQUESTS_PER_SECOND)
        self.paging = paging or PagingFacts()
        self._origin = _origin(self.base_url)
        self._retry_after_parser = Retry(total=0, respect_retry_after_header=True)
        self._session = requests.Session()
        # No transport-level retries: every attempt must go through the throttle.
        adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({AUTH_HEADER: api_key, "Accept": "application/json"})

    def __repr__(self) -> str:
        return (
            f"OmetriaClient(base_url={self.base_url!r}, page_size={self.page_size}, "
            f"throttle={self.throttle!r})"
        )

    __str__ = __repr__

    def close(self) -> None:
        """Close the underlying HTTP session."""
        self._session.close()

    def __enter__(self) -> OmetriaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public streams ---------------------------------------------------------------------

    def profile_pages(
        self, update_since: str | None = None, start_offset: int = 0, tail: Iterable[Any] = ()
    ) -> Iterator[Page]:
        """Yield pages of ``GET /profiles``, optionally only profiles updated since a time.

        ``start_offset`` and ``tail`` (the last records already landed) resume a request.
        """
        params = {} if update_since is None else {"updateSince": update_since}
        return self.paged("profiles", "/profiles", params, start_offset, tail)

    def list_pages(self, mode: str = "all") -> Iterator[Page]:
        """Yield the single page of ``GET /lists?mode=...`` (the endpoint has no paging)."""
        params = {"mode": mode}
        got = self._get_array("/lists", params)
        yield Page("/lists", params, got.records, got.fetched_at, 0, 0, got.server_date)

    def list_change_pages(
        self, list_id: str, since: str, start_offset: int = 0, tail: Iterable[Any] = ()
    ) -> Iterator[Page]:
        """Yield pages of ``GET /lists/{list_id}/changes?since=...``."""
        endpoint = f"/lists/{quote(list_id, safe='')}/changes"
        return self.paged("list_changes", endpoint, {"since": since}, start_offset, tail)

    def unsubscribe_pages(
        self, since: str, before: str | None, start_offset: int = 0, tail: Iterable[Any] = ()
    ) -> Iterator[Page]:
        """Yield pages of ``GET /unsubscribes?since=...[&before=...]``."""
        params = {"since": since} if before is None else {"since": since, "before": before}
        return self.paged("unsubscribes", "/unsubscribes", params, start_offset, tail)

    # -- paging and requests ----------------------------------------------------------------

    def paged(
        self,
        kind: str,
        endpoint: str,
        base_params: dict[str, str],
        start_offset: int,
        tail: Iterable[Any],
    ) -> Iterator[Page]:
        """Pages of ``GET endpoint`` with ``base_params``, by offset (``kind``: the request
        kind, for what is learned about its paging). Offset paging that notices when the
        records shift under it.

        The API pages a live set by offset: a profile deleted (or merged away) before the
        current offset moves every later record one place down, so the next page would skip
        one. So each page after the first starts one record early, on the last record
        delivered, the anchor. Found where it should be: nothing moved. Found later in the
        page: records were inserted before it (those are re-read, harmlessly). Not in the
        page: records before it went away; the request steps back (one record, then twice
        as far, ...) until a page holds one of the records delivered last, and goes on
        after it. Re-reading is harmless (an UPSERT); skipping is not.
        """
        cap = self.paging.cap(kind) if kind in UNDOCUMENTED_PAGING else None
        limit = min(self.page_size, cap) if cap else self.page_size
        recent = _Recent(kind, limit)  # the records delivered last, by identity
        recent.remember(list(tail))
        position = start_offset  # the offset of the first record not delivered yet
        page_number = 0
        previous: list[Any] | None = None
        stalled = 0  # step-backs since the request last got further than ever before
        furthest = position
        while True:
            offset = position - 1 if recent and position > 0 else position
            got = self._page(endpoint, base_params, limit, offset)
            records = got.records
            if previous is not None and records == previous:
                # Stopping here "cleanly" would pass a part of the data off as all of it (and
                # the cursor would then move past the rest): the request fails instead.
                raise ApiError(
                    f"{endpoint} ignores offset: the page at offset {offset} repeats the page "
                    f"before it, so the records after offset {offset} cannot be fetched"
                )
            if offset < position and not recent.holds_anchor(records):
                # The anchor moved down: records before it were deleted. Step back.
                stalled += 1
                if stalled > MAX_RECOVERIES:
                    raise ApiError(
                        f"{endpoint}: the records kept shifting under the pull (deleted while "
                        f"it was paged); gave up after {MAX_RECOVERIES} re-reads in a row"
                    )
                offset, got = self._step_back(endpoint, base_params, limit, offset, recent)
                records = got.records
                logger.warning("%s: records shifted down (deleted during the pull); re-read "
                               "from offset %d", endpoint, offset)  # fmt: skip
            repeats = recent.repeats(records)
            yield Page(endpoint, got_params(base_params, limit, offset), records, got.fetched_at,
                       page_number, offset, got.server_date, repeats)  # fmt: skip
            page_number += 1
            recent.remember(records)
            position = offset + len(records)
            if position > furthest:
                furthest, stalled = position, 0
            if len(records) > limit:
                logger.warning(
                    "%s returned %d records for limit %d: the server ignores limit; stopping",
                    endpoint, len(records), limit,
                )  # fmt: skip
                return
            if len(records) == limit:
                if kind in UNDOCUMENTED_PAGING:  # a full page: it honours the limit
                    self.paging.learn(kind, honoured=limit)
                previous = records
                continue
            # A short page: the end, unless a server that caps pages below the limit cut it.
            fresh = len(records) - len(repeats)
            if not self._capped(kind, endpoint, base_params, limit, position, records, fresh):
                return
            limit = len(records)
            recent.limit = limit
            previous = None

    def _step_back(
        self,
        endpoint: str,
        base_params: dict[str, str],
        limit: int,
        offset: int,
        recent: _Recent,
    ) -> tuple[int, Response]:
        """Re-read from earlier offsets, 1, 2, 4... records back, until a page holds a
        record delivered before (or offset 0 is reached): its offset and the response.

        Every record before a delivered one was delivered too (or arrived after the pull
        passed its place: the next pull's, see the cursor bound), so the request can go on
        after it; stepping back little by little keeps the re-read short (a deletion or
        two moves the records one or two places), and each page mostly new records."""
        step = 1
        while True:
            offset = max(0, offset - step)
            got = self._page(endpoint, base_params, limit, offset)
            if offset == 0 or recent.holds_any(got.records):
                return offset, got
            step *= 2

    def _capped(
        self,
        kind: str,
        endpoint: str,
        base_params: dict[str, str],
        limit: int,
        position: int,
        records: list[Any],
        fresh: int,
    ) -> bool:
        """True when a short page was cut by the server's own cap (records follow it); the
        cap is then remembered. Probes at most once per page size ever seen."""
        if kind not in UNDOCUMENTED_PAGING or fresh <= 0:
            return False
        if self.paging.cap(kind) is not None or len(records) < self.paging.honoured(kind):
            # A known cap, or fewer records than the server returned in one page before:
            # the end. (As many as the largest page seen could still be a cap: probed.)
            return False
        probe = self._page(endpoint, base_params, limit, position)
        if not probe.records:
            self.paging.learn(kind, honoured=len(records))
            return False
        logger.warning(
            "%s returned %d records for limit %d, and more after them: the server caps pages "
            "at %d; paging with that size from now on",
            endpoint, len(records), limit, len(records),
        )  # fmt: skip
        self.paging.learn(kind, cap=len(records))
        return True

    def _page(
        self, endpoint: str, base_params: dict[str, str], limit: int, offset: int
    ) -> Response:
        return self._get_array(endpoint, got_params(base_params, limit, offset))

    def _get_array(self, endpoint: str, params: dict[str, str]) -> Response:
        """GET one endpoint with retries; return the JSON array, when it was fetched, and
        the server's clock then."""
        last: _Retryable | None = None
        for attempt in range(1, self.max_attempts + 1):
            self.throttle.wait()
            try:
                return self._attempt(endpoint, params)
            except _Retryable as failure:
                last = failure
            if last.retry_after is not None and last.retry_after > self.max_retry_wait:
                raise ApiError(
                    f"{endpoint} answered {last.status} asking to retry after "
                    f"{last.retry_after:.0f} s (Retry-After), longer than "
                    f"api.max_retry_wait_seconds ({self.max_retry_wait:.0f} s); not waited for"
                )
            if attempt == self.max_attempts:
                break
            wait = self._wait_seconds(attempt, last.retry_after)
            logger.warning(
                "%s attempt %d/%d failed (status %s: %s); retrying in %.2fs",
                endpoint,
                attempt,
                self.max_attempts,
                last.status,
                last.reason,
                wait,
            )
            time.sleep(wait)
        assert last is not None
        raise ApiError(
            f"{endpoint} failed after {self.max_attempts} attempts; "
            f"last status {last.status} ({last.reason})"
        )

    def _attempt(self, endpoint: str, params: dict[str, str]) -> Response:
        try:
            response = self._get_following(endpoint, params)
            fetched_at = _utc_now_iso()
            body = response.content
        except requests.Timeout as exc:
            raise _Retryable(None, f"timeout: {type(exc).__name__}") from None
        except requests.ConnectionError as exc:
            raise _Retryable(None, f"connection error: {type(exc).__name__}") from None
        except requests.exceptions.ChunkedEncodingError as exc:
            raise _Retryable(None, f"incomplete body: {type(exc).__name__}") from None
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"the API key was refused by the server for {endpoint} (HTTP {status})")
        if status == 404:
            raise NotFoundError(f"{endpoint} not found (HTTP 404; is api.base_url right?)")
        if status in REDIRECT_STATUSES:
            raise ApiError(f"{endpoint} answered HTTP {status} after {MAX_REDIRECTS} redirects")
        if status in RETRY_STATUSES:
            raise _Retryable(status, "retryable status", self._retry_after(response))
        if status != 200:
            raise ApiError(f"{endpoint} answered HTTP {status}; not retried")
        try:
            records = response.json() if body else None
        except ValueError:
            raise _Retryable(status, "body is not valid JSON") from None
        if not isinstance(records, list):
            raise _Retryable(status, "body is not a JSON array")
        return Response(records, fetched_at, _http_date(response.headers.get("Date")))

    def _get_following(self, endpoint: str, params: dict[str, str]) -> requests.Response:
        """GET, following redirects only within the configured origin (scheme, host, port):
        requests would follow any redirect and send our auth header (the key) along."""
        response = self._session.get(
            self.base_url + endpoint, params=params, timeout=self.timeout, allow_redirects=False
        )
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in REDIRECT_STATUSES:
                return response
            target = urljoin(response.url, response.headers.get("Location", ""))
            if _origin(target) != self._origin:
                parts = urlsplit(target)
                raise ApiError(
                    f"{endpoint} answered HTTP {response.status_code}, a redirect to "
                    f"{parts.scheme}://{parts.netloc}, not the host of api.base_url; not "
                    "followed, so that the API key is only sent to api.base_url"
                )
            response.close()
            response = self._session.get(target, timeout=self.timeout, allow_redirects=False)
        return response

    def _retry_after(self, response: requests.Response) -> float | None:
        header = response.headers.get("Retry-After")
        if header is None:
            return None
        try:
            return self._retry_after_parser.parse_retry_after(header)
        except InvalidHeader:
            return None

    def _wait_seconds(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(0.0, cap)


def got_params(base_params: dict[str, str], limit: int, offset: int) -> dict[str, str]:
    return {**base_params, "limit": str(limit), "offset": str(offset)}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default
