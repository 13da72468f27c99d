"""A local HTTP server that answers like Ometria's REST Data API v2, on 127.0.0.1 only.

It serves a ``Dataset`` under ``/v2``, checks ``X-Ometria-Auth``, can enforce a per-second
rate limit with 429s, and can inject faults (5xx, 429, dropped connections, slow or
truncated answers, any other status, redirects) into the next matching requests. Each way
it can misbehave like a live source is an explicit option: ``live`` (the account changes
while a pull pages through it: updates, deletions, new events), ``page_caps`` (fewer
records per page than asked for), ``ignore_offset``, ``odd_list_elements`` (non-lists in
``/lists``). Its ``Date`` header is the account's clock (``Dataset.now``). What each path
answers is in ``endpoints``; this module holds the HTTP side and the ways it misbehaves.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.endpoints import PREFIX, BadRequest, V2Endpoints

AUTH_HEADER = "X-Ometria-Auth"
FAULTS = frozenset({"500", "503", "429", "429-retry-after", "drop", "slow", "truncated"})


@dataclass(frozen=True)
class LiveChanges:
    """How the account changes while it is paged through: before answering each request
    (to a path ending in one of ``paths``, if given), the account's clock moves on
    ``seconds_per_request`` and ``Dataset.live_tick`` changes it by the given counts."""

    seconds_per_request: float = 60.0
    updates: int = 0
    deletes: int = 0
    unsubscribes: int = 0
    list_changes: int = 0
    paths: tuple[str, ...] = ()
    window: float = 0.5


@dataclass(frozen=True)
class RequestRecord:
    """One request the server saw.

    ``status`` is 0 when the connection was dropped; ``time`` is its arrival (``time.time()``).
    """

    method: str
    path: str
    params: dict[str, str]
    status: int
    time: float


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    emulator: EmulatorServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are expected here (the "slow" fault); stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    arrived_at = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header: the emulated account's clock, as a real server's is its own.
        return format_datetime(self.server.emulator.dataset.now.astimezone(UTC), usegmt=True)

    def do_GET(self) -> None:
        self.server.emulator._handle(self)


class EmulatorServer(V2Endpoints):
    """Ometria's v2 API over a ``Dataset``, in a daemon thread on 127.0.0.1.

    ``url`` is the base URL to give a client (``http://127.0.0.1:PORT/v2``). Use ``inject``
    to queue faults, ``ignore_offset`` to mimic a server that ignores paging, and
    ``request_log`` to see what was asked.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        api_key: str = "emulator-key",
        requests_per_second: float | None = None,
        retry_after: bool = False,
        port: int = 0,
    ) -> None:
        super().__init__(dataset)
        self.api_key = api_key
        self.requests_per_second = requests_per_second
        self.retry_after = retry_after
        self.live: LiveChanges | None = None
        self.slow_seconds = 3.0
        # Arrival times carry a few ms of scheduling jitter, so a client spacing requests at
        # exactly 1/rps would trip a zero-tolerance window now and then; like a real limiter,
        # the window forgives this much.
        self.rate_grace_seconds = 0.02
        self._port = port
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._faults: list[list[Any]] = []
        self._served: deque[float] = deque()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"EmulatorServer(url={self.url if self._httpd else None!r})"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        """Bind 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _HttpServer(("127.0.0.1", self._port), _Handler)
        httpd.emulator = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError("the emulator is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8123/v2``."""
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    # -- faults and log ---------------------------------------------------------------------

    def inject(
        self,
        fault: str,
        count: int = 1,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Make the next ``count`` requests (to ``path``, if given) fail with ``fault``: a
        named fault (``FAULTS``) or any HTTP status (``"404"``, ``"418"``, ``"302"`` with a
        ``Location`` in ``headers``), answered with ``headers``.

        ``path`` is matched against the request path, with or without the ``/v2`` prefix.
        """
        if fault not in FAULTS and not (fault.isdigit() and len(fault) == 3):
            raise ValueError(
                f"unknown fault {fault!r}; expected an HTTP status or {sorted(FAULTS)}"
            )
        if path is not None and not path.startswith(PREFIX + "/"):
            path = PREFIX + "/" + path.lstrip("/")
        with self._lock:
            self._faults.append([fault, count, path, dict(headers or {})])

    @property
    def request_log(self) -> list[RequestRecord]:
        """A copy of the requests seen so far, oldest first."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._log.clear()

    def _take_fault(self, path: str) -> tuple[str, dict[str, str]] | None:
        with self._lock:
            for entry in self._faults:
                if entry[2] is None or entry[2] == path:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._faults.remove(entry)
                    return str(entry[0]), entry[3]
        return None

    def _over_rate(self, now: float) -> bool:
        if self.requests_per_second is None:
            return False
        with self._lock:
            while self._served and self._served[0] <= now - 1.0 + self.rate_grace_seconds:
                self._served.popleft()
            if len(self._served) >= self.requests_per_second:
                return True
            self._served.append(now)
            return False

    def _record(
        self, handler: _Handler, method: str, path: str, params: dict[str, str], status: int
    ) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, params, status, handler.arrived_at))

    # -- request handling -------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        arrived = time.monotonic()
        handler.arrived_at = time.time()
        split = urlsplit(handler.path)
        path = unquote(split.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))

        if self._over_rate(arrived):
            headers = {"Retry-After": "1"} if self.retry_after else {}
            self._send(handler, "GET", path, params, 429, {"error": "rate limited"}, headers)
            return

        taken = self._take_fault(path)
        fault, fault_headers = taken if taken else (None, {})
        if fault == "drop":
            self._record(handler, "GET", path, params, 0)
            handler.close_connection = True
            return
        if fault in ("500", "503"):
            body = {"error": "injected fault"}
            self._send(handler, "GET", path, params, int(fault), body, fault_headers)
            return
        if fault in ("429", "429-retry-after"):
            headers = {"Retry-After": "1"} if fault == "429-retry-after" else {}
            headers.update(fault_headers)
            self._send(handler, "GET", path, params, 429, {"error": "rate limited"}, headers)
            return
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if fault is not None and fault.isdigit():
            body = {"error": f"injected status {fault}"}
            self._send(handler, "GET", path, params, int(fault), body, fault_headers)
            return

        if handler.headers.get(AUTH_HEADER) != self.api_key:
            self._send(handler, "GET", path, params, 403, {"error": "API key not allowed"})
            return
        live = self.live
        if live is not None and (not live.paths or path.endswith(live.paths)):
            self.dataset.live_tick(
                live.seconds_per_request, updates=live.updates, deletes=live.deletes,
                unsubscribes=live.unsubscribes, list_changes=live.list_changes,
                window=live.window,
            )  # fmt: skip
        try:
            status, body = self._route(path, params)
        except BadRequest as exc:
            status, body = 400, {"error": str(exc)}
        self._send(handler, "GET", path, params, status, body, truncate=fault == "truncated")

    def _send(
        self,
        handler: _Handler,
        method: str,
        path: str,
        params: dict[str, str],
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        truncate: bool = False,
    ) -> None:
        try:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # half a surrogate pair: sent as a JSON escape, as APIs do
            data = json.dumps(body).encode("ascii")
        if truncate:
            status, data = 200, data[: len(data) // 2]
        self._record(handler, method, path, params, status)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            # The client gave up (timeout) before the answer: nothing to tell it.
            handler.close_connection = True
