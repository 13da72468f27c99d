"""Unsubscribes: ``/unsubscribes`` in windows of ``sync.unsubscribes_window_days`` from the
cursor, the last window open-ended."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

from ometria_spark.client import OmetriaClient, Page
from ometria_spark.landing import Request, ResumePoint
from ometria_spark.streams import ApiStream, PlanInputs, Planned, api_time, parse_api_time


def plan(inputs: PlanInputs) -> Planned:
    since = parse_api_time(inputs.start())
    # Windows up to our clock, and the last one open-ended: a record stamped later than our
    # clock (the server's runs ahead, or it stamps in the future) is fetched all the same;
    # the cursor is bounded by the server's clock anyway.
    end = inputs.now.astimezone(UTC).replace(microsecond=0)
    step = timedelta(days=inputs.window_days)
    windows = []
    while since + step < end:
        windows.append(
            Request("unsubscribes", {"since": api_time(since), "before": api_time(since + step)})
        )
        since += step
    windows.append(Request("unsubscribes", {"since": api_time(since)}))
    return Planned(tuple(windows), inputs.cursors.get(""))


def pages(client: OmetriaClient, request: Request, resume: ResumePoint) -> Iterator[Page]:
    args = request.args
    return client.unsubscribe_pages(args["since"], args.get("before"), resume.offset, resume.tail)


STREAM = ApiStream(
    name="unsubscribes",
    order=40,
    kind="unsubscribes",
    plan=plan,
    pages=pages,
    cursor_fields=("timestamp",),
)
