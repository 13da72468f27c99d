"""Erasure (``ometria-sync erase``): remove every row and raw record about given people, then
rewrite and VACUUM the tables so the bytes are gone, and record the erasure by a hash.

Who: each ``--email`` (compared trimmed and lower-cased) and ``--profile-id``, widened once
through ``profiles`` (the id of a profile whose email is erased, the email of a profile
whose id is), so that a person erased by email also leaves ``member_lists`` and
``unsubscribes`` rows that carry only their profile id, and the reverse.

What goes:
- ``profiles``, ``member_lists``, ``unsubscribes``: rows whose ``profile_id`` or ``email``
  is theirs; ``email_events``: rows whose ``email`` is theirs (``lists`` holds no person).
  Deleted with ``MERGE ... WHEN MATCHED THEN DELETE`` against a temporary view of the
  identifiers, so the Delta log records the join condition, never an identifier (a
  ``DELETE ... WHERE email IN ('...')`` would keep the address in the commit's predicate).
- ``_quarantine``: rows whose raw text holds an erased email (any case, as a whole address:
  not ``xann@example.com`` for ``ann@example.com``) or an erased profile id as a JSON string
  (``"id"``).
- Raw pages still kept (retention, ``storage.raw_retention_days``), merged or not: records
  holding an erased email as any value, or an erased id as a profile's ``id`` or any
  record's ``profile_id``. Pages are written again without them. (A pull not merged yet
  and resumed later then finds shorter pages: it re-reads from an earlier offset, which
  the UPSERT absorbs.)
- Then every table it changed is rewritten without deletion-vectored rows (``REORG TABLE
  ... APPLY (PURGE)``) and VACUUMed with ``maintenance.erase_retention_hours`` (default 0):
  the files that held the rows are deleted now, and with them every older version of those
  tables (time travel before the erasure is lost; see ``maintain.vacuum`` for Delta's 7-day
  safety check). Where that check cannot be turned off (Databricks serverless), set the
  retention to 168: the files then go at the first ``maintain`` a week later.

It holds the run lock while it works, so no sync lands or merges the person meanwhile. It
writes one row per identifier to ``_erasures``: the SHA-256 of the normalised identifier
(never the identifier), its kind, and the request's rows removed per table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from ometria_spark.config import Config
from ometria_spark.delta_table import TableRef, create_if_absent, table_exists, write_to
from ometria_spark.landing import Landing, PageName, landing_for
from ometria_spark.lock import RunLock
from ometria_spark.maintain import vacuum
from ometria_spark.spark import local_frame, string_schema
from ometria_spark.state import ERASURES_TABLE, QUARANTINE_TABLE, table_ref

log = logging.getLogger(__name__)

ERASURES_SCHEMA = StructType(
    [
        StructField("erasure_id", StringType()),
        StructField("identifier_kind", StringType()),  # email | profile_id
        StructField("identifier_sha256", StringType()),
        StructField("erased_at", TimestampType()),
        StructField("rows_removed", MapType(StringType(), LongType())),
        StructField("page_records_removed", LongType()),
    ]
)

# Data tables and the columns that name a person in them.
PERSONAL = {
    "profiles": ("profile_id", "email"),
    "member_lists": ("profile_id", "email"),
    "unsubscribes": ("profile_id", "email"),
    "email_events": (None, "email"),
}
# In raw pages: the fields that hold a profile id, per stream.
PAGE_ID_FIELDS = {"profiles": ("id",), "member_lists": ("profile_id",),
                  "unsubscribes": ("profile_id",)}  # fmt: skip
VIEW = "ometria_erasure_ids"


def sha256(identifier: str) -> str:
    return hashlib.sha256(identifier.encode("utf-8")).hexdigest()


@dataclass
class People:
    emails: set[str] = field(default_factory=set)  # trimmed, lower-cased
    ids: set[str] = field(default_factory=set)

    def rows(self) -> list[tuple[str, str, str | None]]:
        """(kind, value, the value as a whole-address regex for emails)."""
        return [("email", e, _whole(e)) for e in sorted(self.emails)] + [
            ("id", i, None) for i in sorted(self.ids)
        ]


def _whole(email: str) -> str:
    """A Java regex matching the address, any case, not as a part of a longer one."""
    quoted = "".join(f"\\{c}" if not c.isalnum() else c for c in email)
    return f"(?i)(^|[^a-z0-9._%+-]){quoted}($|[^a-z0-9.-])"


@dataclass
class Erasure:
    erasure_id: str
    rows_removed: dict[str, int] = field(default_factory=dict)
    page_records_removed: int = 0
    pages_rewritten: int = 0
    files_vacuumed: dict[str, int] = field(default_factory=dict)


def erase(
    spark: SparkSession, config: Config, emails: list[str], profile_ids: list[str]
) -> Erasure:
    """Erase these people everywhere this configuration keeps data (see the module doc)."""
    given = People({e.strip().lower() for e in emails if e.strip()},
                   {i.strip() for i in profile_ids if i.strip()})  # fmt: skip
    if not given.emails and not given.ids:
        raise ValueError("give at least one --email or --profile-id")
    erasure = Erasure(uuid.uuid4().hex)
    landing = landing_for(config)
    lock = RunLock(landing.root, landing.storage)
    lock.acquire(f"erase-{erasure.erasure_id}", config.sync.lock_lease_seconds)
    try:
        people = _widen(spark, config, given)
        _view(spark, people)
        conditions = {name: _person_condition(*cols) for name, cols in PERSONAL.items()}
        conditions[QUARANTINE_TABLE] = QUARANTINE_CONDITION
        changed = []
        for name, condition in conditions.items():
            ref = table_ref(config, name, register=False)
            erasure.rows_removed[name] = removed = _delete(spark, ref, condition)
            changed += [ref] if removed else []
        _scrub_pages(landing, people, erasure)
        for ref in changed:
            erasure.files_vacuumed[ref.name] = _purge(
                spark, ref, config.maintenance.erase_retention_hours
            )
        _record(spark, config, given, erasure)
    finally:
        spark.catalog.dropTempView(VIEW)
        lock.release(f"erase-{erasure.erasure_id}")
    return erasure


def _widen(spark: SparkSession, config: Config, given: People) -> People:
    """Add the id of each profile with an erased email, and the email of each erased id."""
    people = People(set(given.emails), set(given.ids))
    ref = table_ref(config, "profiles", register=False)
    if not table_exists(spark, ref):
        return people
    _view(spark, given)
    found = spark.sql(
        f"SELECT t.profile_id, lower(trim(t.email)) AS email FROM {ref.sql} t JOIN {VIEW} s "
        f"ON {_person_condition('profile_id', 'email')}"
    ).collect()
    for row in found:
        people.ids.update([row["profile_id"]] if row["profile_id"] else [])
        people.emails.update([row["email"]] if row["email"] else [])
    return people


def _view(spark: SparkSession, people: People) -> None:
    """The identifiers as the temporary view the MERGEs join with (kind, value, pattern)."""
    rows = people.rows()
    local_frame(spark, rows, string_schema("kind", "value", "pattern")).createOrReplaceTempView(
        VIEW
    )


def _person_condition(id_column: str | None, email_column: str) -> str:
    email = f"(s.kind = 'email' AND lower(trim(t.{email_column})) = s.value)"
    if id_column is None:
        return email
    return f"({email} OR (s.kind = 'id' AND t.{id_column} = s.value))"


QUARANTINE_CONDITION = (
    "((s.kind = 'email' AND t.raw RLIKE s.pattern) OR "
    "(s.kind = 'id' AND instr(t.raw, concat('\"', s.value, '\"')) > 0))"
)


def _delete(spark: SparkSession, ref: TableRef, condition: str) -> int:
    """Delete the rows matching any identifier of the view; returns how many."""
    if not table_exists(spark, ref):
        return 0
    result = spark.sql(
        f"MERGE INTO {ref.sql} t USING {VIEW} s ON {condition} WHEN MATCHED THEN DELETE"
    ).first()
    return int(result["num_deleted_rows"]) if result is not None else 0


def _about(record: Any, people: People, id_fields: tuple[str, ...]) -> bool:
    """True when a raw record holds an erased email as any value (at any depth), or an
    erased id in one of ``id_fields``."""
    if isinstance(record, dict):
        if any(str(record.get(f)) in people.ids for f in id_fields if record.get(f) is not None):
            return True
        return any(_about(v, people, ()) for v in record.values())
    if isinstance(record, list):
        return any(_about(v, people, ()) for v in record)
    return isinstance(record, str) and record.strip().lower() in people.emails


def _scrub_pages(landing: Landing, people: People, erasure: Erasure) -> None:
    """Write every kept page that holds a record about them again, without it."""
    for stream, id_fields in PAGE_ID_FIELDS.items():
        base = f"{landing.root}/{stream}"
        for run_id in landing.storage.list_names(base):
            if run_id.startswith("_"):
                continue
            for name in landing.storage.list_names(f"{base}/{run_id}"):
                if PageName.parse(name) is None:
                    continue
                path = f"{base}/{run_id}/{name}"
                try:
                    page = json.loads(landing.storage.read_text(path))
                    records = page["records"]
                except (ValueError, KeyError, TypeError):  # damaged: not readable as records
                    continue
                if not isinstance(records, list):
                    continue
                kept = [r for r in records if not _about(r, people, id_fields)]
                if len(kept) != len(records):
                    erasure.page_records_removed += len(records) - len(kept)
                    erasure.pages_rewritten += 1
                    landing.storage.write_text(path, json.dumps({**page, "records": kept}))


def _purge(spark: SparkSession, ref: TableRef, retain_hours: float) -> int:
    """Rewrite the files holding deletion-vectored rows, then VACUUM; returns files deleted."""
    spark.sql(f"REORG TABLE {ref.sql} APPLY (PURGE)").collect()
    return vacuum(spark, ref, retain_hours)


def _record(spark: SparkSession, config: Config, given: People, erasure: Erasure) -> None:
    ref = table_ref(config, ERASURES_TABLE, register=False)
    create_if_absent(spark, ref, ERASURES_SCHEMA)
    now = datetime.now(UTC)
    rows = [
        (erasure.erasure_id, "email" if kind == "email" else "profile_id", sha256(value), now,
         dict(erasure.rows_removed), erasure.page_records_removed)
        for kind, value, _ in given.rows()
    ]  # fmt: skip
    write_to(local_frame(spark, rows, ERASURES_SCHEMA).write.format("delta").mode("append"), ref)
