"""The peer side of ``bench/peer_dlt.py``: one run of a dlt pipeline, as its own process.

What it does, written the way a dlt user would (dlt 1.31, ``dlt[deltalake]``): one
``@dlt.source`` holding the two resources below, so that one ``pipeline.run`` extracts,
normalizes and loads both (and keeps both cursors in the same source state).

- ``profiles``: dlt's declarative REST API source (``rest_api_resources``, the building block of
  ``rest_api_source``) on ``GET /profiles``. Auth: the ``api_key`` auth type, the key in the
  ``X-Ometria-Auth`` header (read from the env var named by ``--key-env``). Paging: the ``offset``
  paginator with ``limit``/``offset`` query parameters, ``limit`` = the page size given (our job's
  default, 250), ``total_path: None`` since the API returns a bare JSON array with no total; it
  stops at the first empty page (one request more than a client that stops at a short page).
  Incremental: ``incremental`` on the endpoint with ``cursor_path: update_since`` and ``start_param:
  updateSince`` and no ``initial_value``, so the first run sends no ``updateSince`` (a full pull,
  like ours) and each later run sends the largest ``update_since`` loaded so far (dlt keeps it in
  its pipeline state and drops the records at that boundary it has already seen). Write disposition
  ``merge`` with ``primary_key: id``; on Delta tables dlt's merge strategy is ``upsert`` (its
  default there, the only one besides insert-only and cdc), done with delta-rs ``MERGE``. Everything
  else is dlt's defaults: nested objects (``properties``, ``dates``) become
  ``properties__zip``-style columns, lists (``tags``, ``identities``) become child tables
  ``profiles__tags`` and ``profiles__identities``, types are inferred (ISO timestamps become
  timestamps).
- ``email_events``: dlt's ``filesystem`` source lists ``**/*.csv*`` under the export folder,
  with ``incremental("modification_date")`` on the listing (only files new since the last
  run are read: dlt's documented way to load new files), piped into a small transformer that
  reads each (gzip) CSV with Python's ``csv.DictReader`` and yields rows in chunks of 10,000,
  blanks as NULL (as ours). dlt's own ``read_csv`` needs pandas and ``read_csv_duckdb``
  needs duckdb, neither of which ``dlt[deltalake]`` installs. Write disposition ``merge``
  with ``primary_key`` = the spec's key fields (``to_address``, ``event_type``,
  ``dt_occurred``), the fields our ``__sync_key`` hashes.
- Destination: ``filesystem`` with ``table_format="delta"`` on a local folder: Delta tables
  ``<destination>/ometria/<table>`` written by delta-rs (``deltalake``). Pipeline state in
  ``--pipelines-dir``. dlt's defaults otherwise (normalize in a process pool sized to the CPUs,
  20 load workers); ``bench/peer_dlt.py`` turns dlt's telemetry off (no network here).

Prints one JSON line: the rows dlt normalized per table and the seconds of each step.
Run by ``bench/peer_dlt.py``; by hand: ``.venv/bin/python bench/peer_dlt_pipeline.py --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import dlt
from dlt.sources import DltResource
from dlt.sources.filesystem import FileItemDict, filesystem
from dlt.sources.rest_api import rest_api_resources

DATASET = "ometria"
EVENT_KEY = ("to_address", "event_type", "dt_occurred")
CHUNK = 10_000


def profiles_resources(base_url: str, api_key: str, page_size: int) -> list[DltResource]:
    """The REST API resources: ``GET /profiles``, offset paging, incremental on update_since."""
    return rest_api_resources(
        {
            "client": {
                "base_url": base_url.rstrip("/") + "/",
                "auth": {
                    "type": "api_key",
                    "name": "X-Ometria-Auth",
                    "api_key": api_key,
                    "location": "header",
                },
                "paginator": {
                    "type": "offset",
                    "limit": page_size,
                    "offset_param": "offset",
                    "limit_param": "limit",
                    "total_path": None,
                },
            },
            "resources": [
                {
                    "name": "profiles",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "profiles",
                        "data_selector": "$",
                        "incremental": {
                            "start_param": "updateSince",
                            "cursor_path": "update_since",
                        },
                    },
                }
            ],
        }
    )


@dlt.transformer(name="email_events")
def read_events(items: Iterable[FileItemDict]) -> Iterator[list[dict[str, Any]]]:
    """Rows of each listed export file (CSV with a header, gzip or not); blanks as NULL."""
    for item in items:
        with item.open(mode="rt", encoding="utf-8", newline="") as handle:
            chunk: list[dict[str, Any]] = []
            for row in csv.DictReader(handle):
                chunk.append({name: value or None for name, value in row.items()})
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk


def events_resource(exports: str) -> DltResource:
    """New export files (incremental on their modification time) -> rows, merged by key."""
    files = filesystem(bucket_url=exports, file_glob="**/*.csv*")
    files.apply_hints(incremental=dlt.sources.incremental("modification_date"))
    events: DltResource = files | read_events
    events.apply_hints(write_disposition="merge", primary_key=list(EVENT_KEY))
    return events


@dlt.source(name="ometria")
def ometria(base_url: str, api_key: str, page_size: int, exports: str) -> list[DltResource]:
    """Both streams in one source, so one run extracts, normalizes and loads them together."""
    return [*profiles_resources(base_url, api_key, page_size), events_resource(exports)]


def main(argv: list[str] | None = None) -> None:
    """Run the pipeline once and print what it loaded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="API root, e.g. http://127.0.0.1:N/v2")
    parser.add_argument("--key-env", default="OMETRIA_API_KEY", help="env var with the API key")
    parser.add_argument("--exports", required=True, help="root folder of the export files")
    parser.add_argument("--destination", required=True, help="folder for the Delta tables")
    parser.add_argument("--pipelines-dir", required=True, help="dlt's working folder and state")
    parser.add_argument("--page-size", type=int, default=250)
    args = parser.parse_args(argv)

    pipeline = dlt.pipeline(
        pipeline_name="ometria_peer",
        pipelines_dir=args.pipelines_dir,
        destination=dlt.destinations.filesystem(bucket_url=args.destination),
        dataset_name=DATASET,
    )
    started = time.monotonic()
    info = pipeline.run(
        ometria(args.base_url, os.environ[args.key_env], args.page_size, args.exports),
        table_format="delta",
    )
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    normalize = trace.last_normalize_info if trace is not None else None
    steps = {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 2)
        for step in (trace.steps if trace is not None else [])
        if step.finished_at
    }
    print(
        json.dumps(
            {
                "rows": dict(normalize.row_counts) if normalize is not None else {},
                "steps": steps,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
