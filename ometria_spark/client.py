"""Client for Ometria's REST Data API (v2): auth, throttle, retries and paging.

How a request's pages are walked is ``paging.OffsetPager``'s; the client gives it the GET.
It returns pages of raw JSON records and knows nothing of Spark. The API key lives only in
the session's request header; it never appears in a repr, a log record or an exception.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

# The errors and the paging types are defined in ``paging`` (the pager raises ``ApiError``
# too) and re-exported here, where callers import them.
from ometria_spark.errors import ApiError as ApiError
from ometria_spark.errors import AuthError as AuthError
from ometria_spark.errors import NotFoundError as NotFoundError
from ometria_spark.errors import OmetriaError as OmetriaError
from ometria_spark.paging import OffsetPager, Response
from ometria_spark.paging import Page as Page
from ometria_spark.paging import PagingFacts as PagingFacts

logger = logging.getLogger(__name__)

AUTH_HEADER = "X-Ometria-Auth"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
DEFAULT_REQUESTS_PER_SECOND = 4.0


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
        kind, for what is learned about its paging), from ``start_offset``; ``tail``: the
        last records already delivered, when resuming. Offset paging that notices when the
        records shift under it: see ``OffsetPager``."""
        pager = OffsetPager(
            self._get_array,
            self.paging,
            kind=kind,
            endpoint=endpoint,
            base_params=base_params,
            page_size=self.page_size,
            start_offset=start_offset,
            tail=tail,
        )
        # A generator itself, so that nothing (not even reading ``tail``) happens before the
        # first page is asked for.
        yield from pager.pages()

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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default
