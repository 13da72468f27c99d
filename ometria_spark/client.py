"""Client for Ometria's REST Data API (v2): auth, throttle, retries and paging.

It returns pages of raw JSON records and knows nothing of Spark. The API key lives only in
the session's request header; it never appears in a repr, a log record or an exception.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

AUTH_HEADER = "X-Ometria-Auth"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_REQUESTS_PER_SECOND = 4.0


class OmetriaError(Exception):
    """Base class of every error raised by this client."""


class AuthError(OmetriaError):
    """The server refused the API key (HTTP 401 or 403)."""


class NotFoundError(OmetriaError):
    """The requested object does not exist (HTTP 404)."""


class ApiError(OmetriaError):
    """Retries exhausted, an unexpected status, or a body that is not a JSON array."""


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
    """One response of a list endpoint: the records exactly as returned, and how they were asked."""

    endpoint: str
    params: dict[str, str]
    records: list[Any]
    fetched_at: str
    page_number: int
    offset: int


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
        throttle: Throttle | None = None,
    ) -> None:
        # Secret stores and env files often keep a final newline; requests would refuse
        # that header with an error quoting its value, the key.
        api_key = api_key.strip()
        if not api_key:
            raise OmetriaError("the Ometria API key is empty")
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
        self.throttle = throttle or Throttle(DEFAULT_REQUESTS_PER_SECOND)
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
        self, update_since: str | None = None, start_offset: int = 0
    ) -> Iterator[Page]:
        """Yield pages of ``GET /profiles``, optionally only profiles updated since a time."""
        params = {} if update_since is None else {"updateSince": update_since}
        return self._paged("/profiles", params, start_offset)

    def list_pages(self, mode: str = "all") -> Iterator[Page]:
        """Yield the single page of ``GET /lists?mode=...`` (the endpoint has no paging)."""
        params = {"mode": mode}
        records, fetched_at = self._get_array("/lists", params)
        yield Page("/lists", params, records, fetched_at, 0, 0)

    def list_change_pages(self, list_id: str, since: str, start_offset: int = 0) -> Iterator[Page]:
        """Yield pages of ``GET /lists/{list_id}/changes?since=...``."""
        # Paging here is undocumented; limit/offset are sent anyway. A server that ignores
        # limit is read in one page; one that ignores offset fails the request.
        endpoint = f"/lists/{quote(list_id, safe='')}/changes"
        return self._paged(endpoint, {"since": since}, start_offset)

    def unsubscribe_pages(self, since: str, before: str, start_offset: int = 0) -> Iterator[Page]:
        """Yield pages of ``GET /unsubscribes?since=...&before=...``."""
        return self._paged("/unsubscribes", {"since": since, "before": before}, start_offset)

    # -- paging and requests ----------------------------------------------------------------

    def _paged(
        self, endpoint: str, base_params: dict[str, str], start_offset: int
    ) -> Iterator[Page]:
        offset = start_offset
        page_number = 0
        previous: list[Any] | None = None
        while True:
            params = {**base_params, "limit": str(self.page_size), "offset": str(offset)}
            records, fetched_at = self._get_array(endpoint, params)
            if previous is not None and records == previous:
                # Stopping here "cleanly" would pass a part of the data off as all of it (and
                # the cursor would then move past the rest): the request fails instead.
                raise ApiError(
                    f"{endpoint} ignores offset: the page at offset {offset} repeats the page "
                    f"before it, so the records after offset {offset} cannot be fetched"
                )
            yield Page(endpoint, params, records, fetched_at, page_number, offset)
            if len(records) > self.page_size:
                logger.warning(
                    "%s returned %d records for limit %d: the server ignores limit; stopping",
                    endpoint,
                    len(records),
                    self.page_size,
                )
                return
            if len(records) < self.page_size:
                return
            previous = records
            offset += len(records)
            page_number += 1

    def _get_array(self, endpoint: str, params: dict[str, str]) -> tuple[list[Any], str]:
        """GET one endpoint with retries; return the JSON array and when it was fetched."""
        last: _Retryable | None = None
        for attempt in range(1, self.max_attempts + 1):
            self.throttle.wait()
            try:
                return self._attempt(endpoint, params)
            except _Retryable as failure:
                last = failure
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

    def _attempt(self, endpoint: str, params: dict[str, str]) -> tuple[list[Any], str]:
        url = self.base_url + endpoint
        try:
            response = self._session.get(url, params=params, timeout=self.timeout)
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
            raise NotFoundError(f"{endpoint} not found (HTTP 404)")
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
        return records, fetched_at

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
