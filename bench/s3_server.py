"""Shared by the benchmark scripts: an S3-compatible server (moto) on loopback that counts
the storage requests made to it, by whoever makes them (boto3 in the driver, S3A in the JVM).

Objects can also be put straight into its backend (``put``), without a request: a benchmark
fills a bucket with a year of history that way in seconds, and counts only the run it times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from werkzeug.serving import BaseWSGIServer, make_server

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def request_kind(environ: dict[str, Any]) -> str:
    """``LIST``, ``GET``, ``HEAD``, ``PUT``, ``DELETE`` or ``POST`` (multi-object delete,
    multipart upload steps) for one S3 request."""
    method = str(environ.get("REQUEST_METHOD", ""))
    query = str(environ.get("QUERY_STRING", ""))
    path = str(environ.get("PATH_INFO", "")).strip("/")
    if method == "GET" and ("list-type=" in query or "/" not in path):
        return "LIST"
    return method


class CountingS3Server:
    """A threaded moto server on ``127.0.0.1`` (a free port) counting requests by kind."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.requests: Counter[str] = Counter()
        # Seconds the server spent answering, by bucket and kind: moto's LIST walks every
        # key of the bucket, which real S3 does not, so its time grows with a bucket's size.
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._counting(app), True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _counting(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = str(environ.get("PATH_INFO", ""))
            if path.startswith("/moto-api"):
                return app(environ, start_response)
            kind = request_kind(environ)
            started = time.monotonic()
            body = list(app(environ, start_response))
            with self._lock:
                self.requests[kind] += 1
                self.seconds[f"{path.strip('/').split('/')[0]} {kind}"] += (
                    time.monotonic() - started
                )
            return body

        return counted

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> CountingS3Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join()

    def reset_counts(self) -> tuple[Counter[str], dict[str, float]]:
        """The requests by kind and the server's seconds by bucket and kind so far, and
        zero from now on."""
        with self._lock:
            counts, self.requests = self.requests, Counter()
            seconds, self.seconds = self.seconds, defaultdict(float)
        return counts, seconds

    @staticmethod
    def put(bucket: str, key: str, data: bytes) -> None:
        """Store an object directly in the server's backend (no request, not counted)."""
        partition, account = s3_backends.bucket_accounts[bucket]
        s3_backends[account][partition].put_object(bucket, key, data)
