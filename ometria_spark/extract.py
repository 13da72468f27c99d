"""Extraction: plan a pull from the cursors, fetch its pages with the client, land them.

No Spark here; what differs per stream is in ``ometria_spark.streams``. A plan is saved
before the first request, so a crash at any point leaves enough on storage to resume:
finished requests are skipped, an unfinished one continues after its last landed page.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime

from ometria_spark.client import ApiError, NotFoundError, OmetriaClient, Page
from ometria_spark.landing import MAX_DIGESTS, Landing, Plan, Request, ResumePoint
from ometria_spark.phases import PhaseHook, no_hook, phase_name
from ometria_spark.streams import PlanInputs, api_stream, for_request

log = logging.getLogger(__name__)


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
    inputs = PlanInputs(client, dict(cursors), lookback_minutes, start_date, window_days, now)
    planned = api_stream(stream).plan(inputs)
    return Plan(
        stream, run_id, page_size, planned.requests, planned.cursor, dict(cursors),
        planned.rejects,
    )  # fmt: skip


def envelope(plan: Plan, request: Request, page: Page, sequence: int) -> dict[str, object]:
    """A landed page: the records exactly as returned, with their request, fetch time, the
    server's clock then (``server_date``) and the positions of records an earlier page of
    the request held already, unchanged (``repeats``: left out when read). ``page`` is the
    page's number within its request."""
    scope_arg = for_request(request.kind).scope_arg
    context = {scope_arg: request.args[scope_arg]} if scope_arg else {}
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
    on_phase: PhaseHook = no_hook,
) -> int:
    """Fetch every request of the plan not yet landed; return the pages fetched now.

    A pull landed whole by this call, of at most ``MAX_DIGESTS`` records, also saves the
    digest of each record (see ``landing``).
    """
    done, landed = landing.progress(plan)
    fetched = 0
    records = 0
    digests: list[str] | None = [] if not done and not landed else None
    stream = api_stream(plan.stream)
    for index, request in enumerate(plan.requests):
        if index in done:
            continue
        resume = (
            landing.resume_point(plan, landed.get(index, [])) if stream.resumable else ResumePoint()
        )
        sequence = resume.sequence
        try:
            for page in stream.pages(client, request, resume):
                landing.write_page(plan, index, envelope(plan, request, page, sequence))
                if resume.replaces and sequence == resume.sequence:
                    landing.replace_page(plan, resume.replaces, index, sequence, page.offset)
                sequence += 1
                fetched += 1
                on_phase(phase_name("extracting:{stream}", stream=plan.stream))
                records += len(page.records) - len(page.repeats)
                if digests is not None:
                    digests.extend(record_digest(request, r) for r in page.records)
                    if len(digests) > MAX_DIGESTS:
                        digests = None
                if on_page:
                    on_page(plan.stream, fetched, records)
        except NotFoundError:
            # Only a stream that can tell a deleted scope (a list gone from /lists) skips a
            # 404; any other 404 fails the stream and its cursor stays.
            if stream.on_404 is None:
                raise
            reason = stream.on_404(client, request)
            if reason is not None:
                raise ApiError(reason) from None
            log.warning("%s: %s is gone (404, and no longer listed); skipping it",
                        plan.stream, request.args)  # fmt: skip
        landing.mark_request_done(plan, index)
    if digests is not None:
        landing.save_digests(plan, digests)
    return fetched


def record_digest(request: Request, record: object) -> str:
    """The md5 of everything one record's row is built from, from the API's side: the record
    as sent, the scope it belongs to (a list), and the request's bound when the record has
    no value of its own for the field that falls back to it (profiles' ``updated_at``)."""
    stream = for_request(request.kind)
    scope = request.args.get(stream.scope_arg, "") if stream.scope_arg else ""
    fallback = ""
    if stream.fallback and not _has_text(record, stream.fallback[0]):
        fallback = request.args.get(stream.fallback[1], "")
    text = json.dumps(
        [scope, fallback, record], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    # surrogatepass: a lone surrogate (half an emoji) has a digest too; other text is UTF-8.
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _has_text(record: object, field: str) -> bool:
    value = record.get(field) if isinstance(record, dict) else None
    return value is not None and str(value).strip() != ""
