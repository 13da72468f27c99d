"""List membership: ``/lists/{id}/changes`` for every list ``/lists`` has, each list with its
own cursor. A 404 for one list is taken as that list deleted only if ``/lists`` no longer
has it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from ometria_spark.client import OmetriaClient, Page
from ometria_spark.landing import Request, ResumePoint
from ometria_spark.streams import ApiStream, PlanInputs, Planned
from ometria_spark.transforms import NOT_A_RECORD

log = logging.getLogger(__name__)

LISTS_ENDPOINT = "/lists"


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


def _listed(client: OmetriaClient) -> tuple[list[str], list[dict[str, str | None]]]:
    return list_ids([r for p in client.list_pages(mode="all") for r in p.records])


def plan(inputs: PlanInputs) -> Planned:
    ids, rejects = _listed(inputs.client)
    if rejects:
        log.warning(
            "member_lists: %d element(s) of /lists name no list; quarantined (as stream "
            "lists), the other lists' changes load",
            len(rejects),
        )
    requests = tuple(
        Request("list_changes", {"list_id": list_id, "since": inputs.start(list_id)})
        for list_id in ids
    )
    return Planned(requests, None, tuple(rejects))


def pages(client: OmetriaClient, request: Request, resume: ResumePoint) -> Iterator[Page]:
    args = request.args
    return client.list_change_pages(args["list_id"], args["since"], resume.offset, resume.tail)


def on_404(client: OmetriaClient, request: Request) -> str | None:
    """A list whose changes answered 404 is skipped only if ``/lists`` no longer has it (a
    404 for a listed one is an error, not an empty list)."""
    list_id = request.args["list_id"]
    if list_id not in _listed(client)[0]:
        return None
    return (
        f"/lists/{list_id}/changes answered HTTP 404 although /lists still has list "
        f"{list_id}: not taken as a deleted list"
    )


STREAM = ApiStream(
    name="member_lists",
    order=30,
    kind="list_changes",
    plan=plan,
    pages=pages,
    cursor_fields=("id", "timestamp"),
    scope_arg="list_id",
    on_404=on_404,
)
