"""Profiles: ``/profiles``, paged by id; ``updateSince`` from the cursor (none: a full sync)."""

from __future__ import annotations

from collections.abc import Iterator

from ometria_spark.client import OmetriaClient, Page
from ometria_spark.landing import Request, ResumePoint
from ometria_spark.streams import ApiStream, PlanInputs, Planned


def plan(inputs: PlanInputs) -> Planned:
    cursor = inputs.cursors.get("")
    args = {} if cursor is None else {"update_since": inputs.start()}
    return Planned((Request("profiles", args),), cursor)


def pages(client: OmetriaClient, request: Request, resume: ResumePoint) -> Iterator[Page]:
    return client.profile_pages(request.args.get("update_since"), resume.offset, resume.tail)


STREAM = ApiStream(
    name="profiles",
    order=20,
    kind="profiles",
    plan=plan,
    pages=pages,
    cursor_fields=("update_since",),
    # A profile without update_since takes the request's bound as its updated_at.
    fallback=("update_since", "update_since"),
)
