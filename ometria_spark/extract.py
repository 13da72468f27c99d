"""Extraction: plan a pull from the cursors, fetch its pages with the client, land them.

No Spark here. A plan is saved before the first request, so a crash at any point leaves
enough on storage to resume: finished requests are skipped, an unfinished one continues
after its last landed page.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from ometria_spark.client import NotFoundError, OmetriaClient, Page
from ometria_spark.crash import crash_point
from ometria_spark.landing import MAX_DIGESTS, Landing, Plan, Request

log = logging.getLogger(__name__)

API_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
API_STREAMS: tuple[str, ...] = ("lists", "profiles", "member_lists", "unsubscribes")


def api_time(moment: datetime) -> str:
    """A UTC instant as the API's query parameters take it: ``YYYY-MM-DDTHH:MM:SS``."""
    return moment.astimezone(UTC).strftime(API_TIME_FORMAT)


def parse_api_time(text: str) -> datetime:
    return datetime.strptime(text, API_TIME_FORMAT).replace(tzinfo=UTC)


def start_point(cursor: str | None, *, lookback_minutes: int, start_date: str) -> str:
    """Where an incremental request starts: the cursor minus the lookback, else start_date."""
    if cursor is None:
        return api_time(datetime.fromisoformat(start_date[:10]).replace(tzinfo=UTC))
    return api_time(parse_api_time(cursor) - timedelta(minutes=lookback_minutes))


def make_plan(
    stream: str,
    *,
    run_id: str,
    client: OmetriaClient,
    page_size: int,
    cursors: dict[str, str],
    lookback_minutes: int,
    start_date: str,
    window_days: int,
    now: datetime,
) -> Plan:
    """The requests of one pull of ``stream`` given its committed cursors (kept in the plan:
    a resumed pull is checked against the cursors committed by then)."""
    planned = dict(cursors)
    if stream == "profiles":
        cursor = cursors.get("")
        args = {}
        if cursor is not None:  # no cursor: a full sync
            args["update_since"] = start_point(
                cursor, lookback_minutes=lookback_minutes, start_date=start_date
            )
        return Plan(stream, run_id, page_size, (Request("profiles", args),), cursor, planned)
    if stream == "lists":
        return Plan(stream, run_id, page_size, (Request("lists", {"mode": "all"}),), None, planned)
    if stream == "member_lists":
        list_ids = [
            str(r["id"]) for p in client.list_pages(mode="all") for r in p.records if r.get("id")
        ]
        requests = tuple(
            Request(
                "list_changes",
                {
                    "list_id": list_id,
                    "since": start_point(
                        cursors.get(list_id),
                        lookback_minutes=lookback_minutes,
                        start_date=start_date,
                    ),
                },
            )
            for list_id in sorted(set(list_ids))
        )
        return Plan(stream, run_id, page_size, requests, None, planned)
    if stream == "unsubscribes":
        cursor = cursors.get("")
        since = parse_api_time(
            start_point(cursor, lookback_minutes=lookback_minutes, start_date=start_date)
        )
        end = now.astimezone(UTC).replace(microsecond=0)
        windows = []
        while since < end:
            before = min(since + timedelta(days=window_days), end)
            windows.append(
                Request("unsubscribes", {"since": api_time(since), "before": api_time(before)})
            )
            since = before
        return Plan(stream, run_id, page_size, tuple(windows), cursor, planned)
    raise ValueError(f"not an API stream: {stream}")


def _pages(client: OmetriaClient, request: Request, start_offset: int) -> Iterator[Page]:
    args = request.args
    if request.kind == "profiles":
        return client.profile_pages(
            update_since=args.get("update_since"), start_offset=start_offset
        )
    if request.kind == "lists":
        return client.list_pages(mode=args.get("mode", "all"))
    if request.kind == "list_changes":
        return client.list_change_pages(args["list_id"], args["since"], start_offset=start_offset)
    if request.kind == "unsubscribes":
        return client.unsubscribe_pages(args["since"], args["before"], start_offset=start_offset)
    raise ValueError(f"unknown request kind {request.kind!r}")


def envelope(plan: Plan, request: Request, page: Page) -> dict[str, object]:
    """A landed page: the records exactly as returned, with their request and fetch time."""
    context = {"list_id": request.args["list_id"]} if request.kind == "list_changes" else {}
    return {
        "stream": plan.stream,
        "run_id": plan.run_id,
        "page": page.page_number,
        "offset": page.offset,
        "fetched_at": page.fetched_at,
        "request": {"endpoint": page.endpoint, "params": dict(page.params)},
        "context": context,
        "records": page.records,
    }


ProgressCallback = Callable[[str, int, int], None]


def land(
    plan: Plan,
    client: OmetriaClient,
    landing: Landing,
    *,
    on_page: ProgressCallback | None = None,
) -> int:
    """Fetch every request of the plan not yet landed; return the pages fetched now.

    A pull landed whole by this call, of at most ``MAX_DIGESTS`` records, also saves the
    digest of each record (see ``landing``).
    """
    done, landed = landing.progress(plan)
    fetched = 0
    records = 0
    digests: list[str] | None = [] if not done and not landed else None
    for index, request in enumerate(plan.requests):
        if index in done:
            continue
        start = (
            landing.resume_offset(plan, index, landed.get(index, []))
            if request.kind != "lists"
            else 0
        )
        try:
            for page in _pages(client, request, start):
                landing.write_page(plan, index, envelope(plan, request, page))
                fetched += 1
                crash_point(f"extracting:{plan.stream}", when=fetched == 2)
                records += len(page.records)
                if digests is not None:
                    digests.extend(record_digest(request, r) for r in page.records)
                    if len(digests) > MAX_DIGESTS:
                        digests = None
                if on_page:
                    on_page(plan.stream, fetched, records)
        except NotFoundError:
            # A list deleted between planning and fetching: nothing to land for it.
            log.warning("%s: %s answered 404; skipping it", plan.stream, request.args)
        landing.mark_request_done(plan, index)
    if digests is not None:
        landing.save_digests(plan, digests)
    return fetched


def record_digest(request: Request, record: object) -> str:
    """The md5 of one record as the API sent it, with the list it belongs to if any."""
    scope = request.args.get("list_id", "") if request.kind == "list_changes" else ""
    text = json.dumps([scope, record], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a lone surrogate (half an emoji) has a digest too; other text is UTF-8.
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
