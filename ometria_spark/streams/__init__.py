"""The streams: the one ordered list of their names, and what is specific to each.

Each module of this package describes one stream (``STREAM``, with its place in the run
order); the rest of the job reads these descriptions and has no per-stream branches. An
API stream says how a pull is planned from the committed cursors, which client call
fetches a request's pages and which raw fields give its cursor; its table is
``tables.TABLES[name]``. Adding a stream is a new module here plus its table spec.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING

from ometria_spark.config import INSTANT_FORMAT

if TYPE_CHECKING:  # (the modules below import this one)
    from ometria_spark.client import OmetriaClient, Page
    from ometria_spark.landing import Request, ResumePoint


API_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def api_time(moment: datetime) -> str:
    """A UTC instant as the API's query parameters take it: ``YYYY-MM-DDTHH:MM:SS``."""
    return moment.astimezone(UTC).strftime(API_TIME_FORMAT)


def parse_api_time(text: str) -> datetime:
    return datetime.strptime(text, API_TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class PlanInputs:
    """What a pull is planned from: the committed cursors (scope -> cursor) and settings."""

    client: OmetriaClient
    cursors: dict[str, str]
    lookback_minutes: int
    start_date: str
    window_days: int
    now: datetime

    def start(self, scope: str = "") -> str:
        """Where an incremental request of ``scope`` starts: its cursor minus the lookback,
        else ``start_date`` (``config.sync.start_date``: UTC, as the config normalises it)."""
        cursor = self.cursors.get(scope)
        if cursor is None:
            return api_time(datetime.strptime(self.start_date, INSTANT_FORMAT).replace(tzinfo=UTC))
        return api_time(parse_api_time(cursor) - timedelta(minutes=self.lookback_minutes))


@dataclass(frozen=True)
class Planned:
    """A pull's requests, the single cursor it starts from (if one), and the elements met
    while planning that are no records (quarantined when the pull is merged)."""

    requests: tuple[Request, ...]
    cursor: str | None = None
    rejects: tuple[dict[str, str | None], ...] = ()


@dataclass(frozen=True)
class ApiStream:
    """A stream pulled from the REST API into landed pages.

    ``kind`` names its requests in a plan (``_plan.json`` keeps it). ``cursor_fields`` are
    the raw fields its cursors come from, the last the timestamp; with two, the first is
    the scope (one cursor per value). ``scope_arg`` is the request argument that names a
    request's scope: landed with each page (its ``context``) and part of a record's digest.
    A record without ``fallback[0]`` takes the request's ``fallback[1]`` argument in its
    row, so that argument is part of its digest. ``on_404`` decides a request answered 404:
    ``None`` when its scope is gone and it is skipped, else why it is an error (without
    it, any 404 is an error). A stream that is not
    ``resumable`` starts its request again rather than continue after a landed page.
    """

    name: str
    order: int
    kind: str
    plan: Callable[[PlanInputs], Planned]
    pages: Callable[[OmetriaClient, Request, ResumePoint], Iterator[Page]]
    cursor_fields: tuple[str, ...] = ()
    scope_arg: str | None = None
    fallback: tuple[str, str] | None = None
    on_404: Callable[[OmetriaClient, Request], str | None] | None = None
    resumable: bool = True

    @property
    def scope_field(self) -> str | None:
        return self.cursor_fields[0] if len(self.cursor_fields) == 2 else None


@dataclass(frozen=True)
class FileStream:
    """A stream loaded from files another system writes (the self-serve export)."""

    name: str
    order: int


Stream = ApiStream | FileStream


@cache
def registry() -> tuple[Stream, ...]:
    """Every stream, in run order (each module's ``STREAM``)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.STREAM)
    return tuple(sorted(found, key=lambda s: s.order))


def names() -> tuple[str, ...]:
    """The streams' names, in run order."""
    return tuple(s.name for s in registry())


def api_streams() -> tuple[ApiStream, ...]:
    return tuple(s for s in registry() if isinstance(s, ApiStream))


def api_stream(name: str) -> ApiStream:
    for stream in api_streams():
        if stream.name == name:
            return stream
    raise ValueError(f"not an API stream: {name}")


def for_request(kind: str) -> ApiStream:
    """The API stream whose plans hold requests of ``kind``."""
    for stream in api_streams():
        if stream.kind == kind:
            return stream
    raise ValueError(f"unknown request kind {kind!r}")
