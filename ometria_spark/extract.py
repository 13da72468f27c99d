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
from typing import Any

from ometria_spark.client import ApiError, NotFoundError, OmetriaClient, Page
from ometria_spark.config import INSTANT_FORMAT
from ometria_spark.crash import crash_point
from ometria_spark.landing import MAX_DIGESTS, Landing, Plan, Request, ResumePoint

log = logging.getLogger(__name__)

API_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
API_STREAMS: tuple[str, ...] = ("lists", "profiles", "member_lists", "unsubscribes")


def api_time(moment: datetime) -> str:
    """A UTC instant as the API's query parameters take it: ``YYYY-MM-DDTHH:MM:SS``."""
    return moment.astimezone(UTC).strftime(API_TIME_FORMAT)


def parse_api_time(text: str) -> datetime:
    return datetime.strptime(text, API_TIME_FORMAT).replace(tzinfo=UTC)


def start_point(cursor: str | None, *, lookback_minutes: int, start_date: str) -> str:
    """Where an incremental request starts: the cursor minus the lookback, else start_date
    (``config.sync.start_date``: UTC, as the config normalises it)."""
    if cursor is None:
        return api_time(datetime.strptime(start_date, INSTANT_FORMAT).replace(tzinfo=UTC))
    return api_time(parse_api_time(cursor) - timedelta(minutes=lookback_minutes))


LISTS_ENDPOINT = "/lists"
NOT_A_RECORD = "record does not match the expected shape"


def list_ids(records: list[Any]) -> tuple[list[str], list[dict[str, str | None]]]:
    """The list ids of a ``/lists`` answer, and its elements that name no list (each as a
    quarantine entry, as the lists stream quarantines them)."""
    ids: list[str] = []
    rejects: list[dict[str, str | None]] = []
    for record in records:
        value = record.get("id") if isinstance(record, dict) else None
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            ids.append(str(value))
            continue
        # As the lists stream quarantines them (same reason and text: quarantined once).
        no_id = record is None or isinstance(record, dict)
        reason = "missing required field 'id'" if no_id else NOT_A_RECORD
        raw = record if isinstance(record, str) or record is None else _compact(record)
        rejects.append({"stream": "lists", "request": LISTS_ENDPOINT, "reason": reason, "raw": raw})
    return sorted(set(ids)), rejects


def _compact(value: object) -> str:
    """JSON text as Spark renders an element of a JSON array read as text."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        ids, rejects = list_ids([r for p in client.list_pages(mode="all") for r in p.records])
        if rejects:
            log.warning(
                "member_lists: %d element(s) of /lists name no list; quarantined (as stream "
                "lists), the other lists' changes load",
                len(rejects),
            )
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
            for list_id in ids
        )
        return Plan(stream, run_id, page_size, requests, None, planned, tuple(rejects))
    if stream == "unsubscribes":
        cursor = cursors.get("")
        since = parse_api_time(
            start_point(cursor, lookback_minutes=lookback_minutes, start_date=start_date)
        )
        # Windows of ``window_days`` up to our clock, and the last one open-ended: a record
        # stamped later than our clock (the server's runs ahead, or it stamps in the future)
        # is fetched all the same; the cursor is bounded by the server's clock anyway.
        end = now.astimezone(UTC).replace(microsecond=0)
        windows = []
        while since + timedelta(days=window_days) < end:
            before = since + timedelta(days=window_days)
            windows.append(
                Request("unsubscribes", {"since": api_time(since), "before": api_time(before)})
            )
            since = before
        windows.append(Request("unsubscribes", {"since": api_time(since)}))
        return Plan(stream, run_id, page_size, tuple(windows), cursor, planned)
    raise ValueError(f"not an API stream: {stream}")


def _pages(client: OmetriaClient, request: Request, resume: ResumePoint) -> Iterator[Page]:
    args = request.args
    at, tail = resume.offset, resume.tail
    if request.kind == "profiles":
        return client.profile_pages(args.get("update_since"), at, tail)
    if request.kind == "lists":
        return client.list_pages(mode=args.get("mode", "all"))
    if request.kind == "list_changes":
        return client.list_change_pages(args["list_id"], args["since"], at, tail)
    if request.kind == "unsubscribes":
        return client.unsubscribe_pages(args["since"], args.get("before"), at, tail)
    raise ValueError(f"unknown request kind {request.kind!r}")


def envelope(plan: Plan, request: Request, page: Page, sequence: int) -> dict[str, object]:
    """A landed page: the records exactly as returned, with their request, fetch time, the
    server's clock then (``server_date``) and the positions of records an earlier page of
    the request held already, unchanged (``repeats``: left out when read). ``page`` is the
    page's number within its request."""
    context = {"list_id": request.args["list_id"]} if request.kind == "list_changes" else {}
    return {
        "stream": plan.stream,
        "run_id": plan.run_id,
        "page": sequence,
        "offset": page.offset,
        "fetched_at": page.fetched_at,
        "server_date": page.server_date,
        "repeats": list(page.repeats),
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
        resume = (
            landing.resume_point(plan, landed.get(index, []))
            if request.kind != "lists"
            else ResumePoint()
        )
        sequence = resume.sequence
        try:
            for page in _pages(client, request, resume):
                landing.write_page(plan, index, envelope(plan, request, page, sequence))
                if resume.replaces and sequence == resume.sequence:
                    landing.replace_page(plan, resume.replaces, index, sequence, page.offset)
                sequence += 1
                fetched += 1
                crash_point(f"extracting:{plan.stream}", when=fetched == 2)
                records += len(page.records) - len(page.repeats)
                if digests is not None:
                    digests.extend(record_digest(request, r) for r in page.records)
                    if len(digests) > MAX_DIGESTS:
                        digests = None
                if on_page:
                    on_page(plan.stream, fetched, records)
        except NotFoundError:
            if request.kind != "list_changes":
                raise
            list_id = request.args["list_id"]
            if _still_listed(client, list_id):
                raise ApiError(
                    f"/lists/{list_id}/changes answered HTTP 404 although /lists still has "
                    f"list {list_id}: not taken as a deleted list"
                ) from None
            # A list deleted between planning and fetching: nothing to land for it.
            log.warning("%s: list %s is gone (404, and no longer in /lists); skipping it",
                        plan.stream, request.args["list_id"])  # fmt: skip
        landing.mark_request_done(plan, index)
    if digests is not None:
        landing.save_digests(plan, digests)
    return fetched


def _still_listed(client: OmetriaClient, list_id: str) -> bool:
    """Whether ``/lists`` still has the list whose changes answered 404: only a list that is
    gone may be skipped (a 404 for a listed one is an error, not an empty list)."""
    ids, _ = list_ids([r for p in client.list_pages(mode="all") for r in p.records])
    return list_id in ids


def record_digest(request: Request, record: object) -> str:
    """The md5 of everything one record's row is built from, from the API's side: the record
    as sent, the list it belongs to, and the request's ``updateSince`` when the record has
    no ``update_since`` of its own (profiles' ``updated_at`` falls back to that bound)."""
    scope = request.args.get("list_id", "") if request.kind == "list_changes" else ""
    fallback = ""
    if request.kind == "profiles" and not _has_text(record, "update_since"):
        fallback = request.args.get("update_since", "")
    text = json.dumps(
        [scope, fallback, record], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    # surrogatepass: a lone surrogate (half an emoji) has a digest too; other text is UTF-8.
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _has_text(record: object, field: str) -> bool:
    value = record.get(field) if isinstance(record, dict) else None
    return value is not None and str(value).strip() != ""
