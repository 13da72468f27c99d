"""Email-event export files shaped like Ometria's Self-Serve Data Export.

Files sit in nested date folders (``YYYY/MM/DD/email_events_<n>.csv.gz``), as CSV with a
header row (RFC 4180 quoting, UTF-8) or JSON lines, optionally gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXPORT_COLUMNS = [
    "event_id",
    "uuid",
    "to_address",
    "event_type",
    "dt_occurred",
    "bounce_class",
    "reason",
    "device_type",
    "geo_country",
    "geo_region",
    "geo_timezone",
    "target_url",
    "campaign_title",
    "campaign_type",
]


def csv_bytes(header: Sequence[str], events: list[dict[str, Any]]) -> bytes:
    """A CSV file with ``header``, one row per event (a missing or None value is empty)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for event in events:
        writer.writerow(["" if event.get(c) is None else event[c] for c in header])
    return buffer.getvalue().encode("utf-8")


def jsonl_bytes(events: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events).encode("utf-8")


def export_files(
    events: list[dict[str, Any]], *, files: int = 4, fmt: str = "csv", compress: bool = True
) -> list[tuple[str, bytes]]:
    """Render events as export files: ``(relative path, content)`` pairs.

    Events are grouped by the date of ``dt_occurred``; each day's events are split into up
    to ``files`` files named ``YYYY/MM/DD/email_events_<n>.<csv|jsonl>[.gz]``.
    """
    if fmt not in ("csv", "json", "jsonl"):
        raise ValueError(f"fmt must be 'csv' or 'json', not {fmt!r}")
    if files < 1:
        raise ValueError("files must be at least 1")
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_day[str(event["dt_occurred"])[:10]].append(event)
    extension = "csv" if fmt == "csv" else "jsonl"
    suffix = ".gz" if compress else ""
    out: list[tuple[str, bytes]] = []
    for day in sorted(by_day):
        day_events = by_day[day]
        chunk = -(-len(day_events) // files)
        folder = day.replace("-", "/")
        for n, begin in enumerate(range(0, len(day_events), chunk)):
            part = day_events[begin : begin + chunk]
            data = csv_bytes(EXPORT_COLUMNS, part) if fmt == "csv" else jsonl_bytes(part)
            if compress:
                # mtime=0 keeps the bytes identical from run to run.
                data = gzip.compress(data, mtime=0)
            out.append((f"{folder}/email_events_{n}.{extension}{suffix}", data))
    return out


def write_local(root: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    """Write export files under ``root``, creating the date folders; return their paths."""
    written = []
    for name, data in files:
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def write_s3(s3_client: Any, bucket: str, prefix: str, files: list[tuple[str, bytes]]) -> list[str]:
    """Upload export files to ``s3://bucket/prefix/...`` with a boto3 client; return the keys."""
    keys = []
    base = prefix.strip("/")
    for name, data in files:
        key = f"{base}/{name}" if base else name
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        keys.append(key)
    return keys
