"""Expected table rows computed in plain Python from the emulator's dataset.

An independent statement of the spec's mapping (no Spark): used to check what the job
wrote. ``__synced_at`` is left out (it is the write time).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from typing import Any

from ometria_spark.emulator.dataset import Dataset


def md5(*parts: str | None) -> str:
    return hashlib.md5("".join(p or "" for p in parts).encode("utf-8")).hexdigest()


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.strip() else None
    return json.dumps(value, ensure_ascii=False)


def when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def profiles(ds: Dataset, source: str, account: str) -> list[tuple[Any, ...]]:
    rows = []
    for p in ds.profiles:
        # A part of the wrong shape ("properties": []) loads as NULLs.
        props = p["properties"] if isinstance(p.get("properties"), dict) else {}
        dates = p["dates"] if isinstance(p.get("dates"), dict) else {}
        rows.append(
            (
                p["id"], text(p.get("email")), text(p.get("phone_number")),
                text(p.get("customer_id")), text(p.get("name")), text(p.get("lastname")),
                text(p.get("firstname")), text(p.get("gender")), text(p.get("country")),
                text(p.get("marketing_optin")), text(p.get("timezone")),
                day(p.get("date_of_birth")), boolean(p.get("seen")),
                text(p.get("lifecycle_status")), boolean(p.get("is_email_valid")),
                text(props.get("zip")), text(props.get("city")), text(props.get("address1")),
                text(props.get("address2")), text(props.get("province")),
                text(props.get("shopify_tags")), when(dates.get("account_created")),
                when(p.get("update_since")), when(dates.get("marketing_optin")),
                when(dates.get("marketing_optout")),
                account, source, md5(source, p["id"]),
            )
        )  # fmt: skip
    return rows


def lists(ds: Dataset, source: str, account: str) -> list[tuple[Any, ...]]:
    rows = []
    for x in ds.lists:
        if not isinstance(x, dict):
            continue
        rows.append(
            (
                text(x["id"]), text(x.get("title")), text(x.get("description")),
                text(x.get("status")), text(x.get("type")), when(x.get("timestamp_created")),
                when(x.get("timestamp_stats_updated")), account, source,
                md5(source, text(x["id"])),
            )
        )  # fmt: skip
    return rows


def member_lists(ds: Dataset, source: str, account: str) -> list[tuple[Any, ...]]:
    rows = {}
    for list_id, changes in ds.list_changes.items():
        for c in changes:
            key = md5(source, list_id, c["profile_id"], c["timestamp"])
            rows[key] = (
                key, list_id, c["profile_id"], text(c.get("email")), when(c["timestamp"]),
                text(c.get("event")), account, source, key,
            )  # fmt: skip
    return list(rows.values())


def unsubscribes(ds: Dataset, source: str, account: str) -> list[tuple[Any, ...]]:
    rows = {}
    for u in ds.unsubscribes:
        key = md5(source, u.get("profile_id"), u["timestamp"])
        rows[key] = (
            key, u.get("profile_id"), text(u.get("email_address")), when(u["timestamp"]),
            text(u.get("send_id")), text(u.get("mass_campaign_id")),
            text(u.get("trigger_campaign_id")), text(u.get("reason")),
            text(u.get("reason_text")), account, source, key,
        )  # fmt: skip
    return list(rows.values())


def email_events(events: list[dict[str, Any]], source: str, account: str) -> list[tuple[Any, ...]]:
    rows = {}
    for e in events:  # later copies of a key win, as in the job
        key = md5(source, e.get("to_address"), e.get("event_type"), e.get("dt_occurred"))
        rows[key] = (
            key, text(e.get("event_id")), text(e.get("uuid")), text(e.get("to_address")),
            text(e.get("event_type")), when(e.get("dt_occurred")), text(e.get("bounce_class")),
            text(e.get("reason")), text(e.get("device_type")), text(e.get("geo_country")),
            text(e.get("geo_region")), text(e.get("geo_timezone")), text(e.get("target_url")),
            text(e.get("campaign_title")), text(e.get("campaign_type")), account, source, key,
        )  # fmt: skip
    return list(rows.values())


BUILDERS = {
    "profiles": profiles,
    "lists": lists,
    "member_lists": member_lists,
    "unsubscribes": unsubscribes,
}
