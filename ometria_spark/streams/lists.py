"""Lists: ``/lists?mode=all``, one answer (not paged), read whole on every run."""

from __future__ import annotations

from collections.abc import Iterator

from ometria_spark.client import OmetriaClient, Page
from ometria_spark.landing import Request, ResumePoint
from ometria_spark.streams import ApiStream, PlanInputs, Planned


def plan(inputs: PlanInputs) -> Planned:
    return Planned((Request("lists", {"mode": "all"}),))


def pages(client: OmetriaClient, request: Request, resume: ResumePoint) -> Iterator[Page]:
    return client.list_pages(mode=request.args.get("mode", "all"))


STREAM = ApiStream(name="lists", order=10, kind="lists", plan=plan, pages=pages, resumable=False)
