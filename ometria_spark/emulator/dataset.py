"""A seeded, deterministic Ometria account: profiles, lists, list changes, unsubscribes and
email events, with a clock that can be moved on one day at a time.

Record shapes and timestamp formats follow docs/ometria-sources.md, including the awkward
parts a connector must survive: nulls, absent keys, unicode, commas and quotes in text.
The values records draw from live in ``vocabulary``; this module holds the account and
how it changes.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from ometria_spark.emulator.vocabulary import (
    ADDRESSES,
    BOUNCE_CLASSES,
    CAMPAIGNS,
    DEVICES,
    EVENT_TYPES,
    FIRST_NAMES,
    GENDERS,
    GEOS,
    LAST_NAMES,
    LIFECYCLE,
    LIST_TITLES,
    LOCATIONS,
    OPTIN,
    SHOPIFY_TAGS,
    TAGS,
    UNSUB_REASONS,
    UNSUB_TYPES,
)

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
DAY = 86_400


def profile_ts(epoch: float) -> str:
    """Format like the profiles and lists endpoints: ``2015-11-03T11:48:10+00:00``."""
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def unsubscribe_ts(epoch: float) -> str:
    """Format like the unsubscribes endpoint: ``2017-05-17 22:08:07+00``."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def event_ts(epoch: float) -> str:
    """Format like the email-event exports: ``2026-01-01 10:11:12``."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S")


def profile_id(n: int) -> str:
    """The n-th profile's id, shaped like ``2695-c473e2-4aaf58`` and unique for n < 2**24."""
    # An odd multiplier is a bijection modulo 2**24, so the middle part never repeats.
    middle = (n * 0x5BD1E9 + 0x3C6EF3) & 0xFFFFFF
    head = (n * 0x9E37 + 0x2695) & 0xFFFF
    tail = (n * 0x7FEB35 + 0x4AAF58) & 0xFFFFFF
    return f"{head:04x}-{middle:06x}-{tail:06x}"


@dataclass
class Dataset:
    """The state of one emulated Ometria account. Read and change it under ``lock``."""

    profiles: list[dict[str, Any]]
    lists: list[dict[str, Any]]
    list_changes: dict[str, list[dict[str, Any]]]
    unsubscribes: list[dict[str, Any]]
    email_events: list[dict[str, Any]]
    now: datetime
    rng: random.Random = field(repr=False, compare=False)
    next_profile: int = 0
    next_event: int = 0
    version: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # Profiles deleted (erased, or merged into another) since the account was generated, as
    # they were last: a connector keeps the rows it loaded before.
    deleted: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def generate(
        cls,
        seed: int = 7,
        profiles: int = 2500,
        lists: int = 6,
        start: datetime = DEFAULT_START,
    ) -> Dataset:
        """Build a deterministic account of ``profiles`` profiles and ``lists`` lists."""
        rng = random.Random(seed)
        start_epoch = start.timestamp()
        ds = cls([], [], {}, [], [], start, rng)
        # Profiles were last updated some time in the two years before the clock starts.
        ds.profiles = [
            ds._new_profile(start_epoch - 1 - rng.random() * 730 * DAY) for _ in range(profiles)
        ]
        ds.profiles.sort(key=itemgetter("id"))
        ds.lists = [ds._new_list(i, start_epoch) for i in range(lists)]
        for lst in ds.lists:
            ds.list_changes[lst["id"]] = ds._initial_changes(start_epoch)
            ds._refresh_size(lst)
        ds.unsubscribes = [
            ds._new_unsubscribe(start_epoch - 1 - rng.random() * 90 * DAY)
            for _ in range(max(1, min(profiles // 50, 5000)))
        ]
        ds.unsubscribes.sort(key=itemgetter("timestamp"))
        ds.email_events = [
            ds._new_event(start_epoch - 1 - rng.random() * 7 * DAY)
            for _ in range(max(1, min(profiles, 20_000)))
        ]
        ds.email_events.sort(key=itemgetter("dt_occurred"))
        return ds

    def advance_day(self) -> None:
        """Move the clock one day on, with that day's profile updates, sign-ups and events.

        Every new timestamp lies in the day just passed: at or after the old ``now`` and
        before the new one.
        """
        with self.lock:
            rng = self.rng
            day_start = self.now.timestamp()
            self.now += timedelta(days=1)

            def in_day() -> float:
                return day_start + rng.random() * (DAY - 1)

            count = len(self.profiles)
            for i in rng.sample(range(count), max(1, count // 50)) if count else []:
                self.profiles[i] = self._updated_profile(self.profiles[i], in_day())
            self.profiles.extend(self._new_profile(in_day()) for _ in range(max(1, count // 100)))
            self.profiles.sort(key=itemgetter("id"))

            for lst in self.lists:
                if lst["status"] != "READY":
                    continue
                changes = self.list_changes[lst["id"]]
                for _ in range(rng.randint(1, 4)):
                    changes.append(self._change(rng.choice(self.profiles), "list_enter", in_day()))
                if rng.random() < 0.5:
                    changes.append(self._change(rng.choice(self.profiles), "list_exit", in_day()))
                changes.sort(key=itemgetter("timestamp"))
                lst["timestamp_last_refreshed"] = profile_ts(in_day())
                lst["timestamp_stats_updated"] = lst["timestamp_last_refreshed"]
                self._refresh_size(lst)

            new_unsubs = [self._new_unsubscribe(in_day()) for _ in range(max(1, count // 1000))]
            self.unsubscribes.extend(new_unsubs)
            self.unsubscribes.sort(key=itemgetter("timestamp"))
            new_events = [self._new_event(in_day()) for _ in range(max(5, min(count // 50, 5000)))]
            self.email_events.extend(new_events)
            self.email_events.sort(key=itemgetter("dt_occurred"))
            self.version += 1

    def live_tick(
        self,
        seconds: float,
        *,
        updates: int = 0,
        deletes: int = 0,
        unsubscribes: int = 0,
        list_changes: int = 0,
        window: float = 0.5,
    ) -> None:
        """Move the clock on ``seconds`` and change the account at that moment, as it goes
        on changing while a connector pages through it: ``updates`` profiles updated and
        ``deletes`` deleted, picked among the first ``window`` of them in id order (the
        pages a pull has fetched already), new unsubscribes and list changes."""
        with self.lock:
            rng = self.rng
            self.now += timedelta(seconds=seconds)
            at = self.now.timestamp() - 1
            early = max(1, int(len(self.profiles) * window))
            for _ in range(updates if self.profiles else 0):
                i = rng.randrange(min(early, len(self.profiles)))
                self.profiles[i] = self._updated_profile(self.profiles[i], at)
            for _ in range(min(deletes, len(self.profiles) - 1)):
                self.deleted.append(
                    self.profiles.pop(rng.randrange(min(early, len(self.profiles))))
                )
            for _ in range(unsubscribes):
                self.unsubscribes.append(self._new_unsubscribe(at))
            self.unsubscribes.sort(key=itemgetter("timestamp"))
            ready = [x["id"] for x in self.lists if x["status"] == "READY"]
            for _ in range(list_changes if ready and self.profiles else 0):
                changes = self.list_changes[rng.choice(ready)]
                changes.append(self._change(rng.choice(self.profiles), "list_enter", at))
                changes.sort(key=itemgetter("timestamp"))
            self.version += 1

    def add_future_records(self, at: datetime) -> None:
        """One profile update, one change per list and one unsubscribe stamped at ``at`` (a
        source clock that slipped, or a placeholder date such as 2099)."""
        with self.lock:
            epoch = at.timestamp()
            if self.profiles:
                self.profiles[0] = self._updated_profile(self.profiles[0], epoch)
            for lst in self.lists:
                if self.profiles:
                    changes = self.list_changes[lst["id"]]
                    changes.append(self._change(self.profiles[-1], "list_enter", epoch))
                    changes.sort(key=itemgetter("timestamp"))
            self.unsubscribes.append(self._new_unsubscribe(epoch))
            self.unsubscribes.sort(key=itemgetter("timestamp"))
            self.version += 1

    # -- record builders --------------------------------------------------------------------

    def _new_profile(self, updated: float) -> dict[str, Any]:
        rng = self.rng
        n = self.next_profile
        self.next_profile += 1
        r = rng.getrandbits(64)
        first = FIRST_NAMES[r % 16]
        last = LAST_NAMES[(r >> 4) % 12]
        country, tz, city, province, zip_code = LOCATIONS[(r >> 8) % 8]
        optin = OPTIN[(r >> 11) % 3]
        created = updated - rng.random() * 365 * DAY
        email = None if (r >> 13) & 63 == 0 else f"customer{n}@example.com"
        profile: dict[str, Any] = {
            "@type": "contact",
            "id": profile_id(n),
            "email": email,
            "phone_number": None if (r >> 19) % 3 == 0 else f"+4477009{n % 100000:05d}",
            "name": f"{first} {last}",
            "firstname": first,
            "lastname": last,
            "gender": GENDERS[(r >> 21) % 4],
            "country": country,
            "marketing_optin": optin,
            "timezone": tz,
            "date_of_birth": None
            if (r >> 23) % 4 == 0
            else f"{1950 + (r >> 25) % 55}-{1 + (r >> 31) % 12:02d}-{1 + (r >> 35) % 28:02d}",
            "seen": bool(r >> 40 & 1),
            "lifecycle_status": LIFECYCLE[(r >> 41) % 5],
            "is_email_valid": email is not None and (r >> 44) % 10 != 0,
            "properties": {
                "zip": zip_code,
                "city": city,
                "address1": ADDRESSES[(r >> 48) % 6],
                "address2": None,
                "province": province,
                "shopify_tags": SHOPIFY_TAGS[(r >> 51) % 5],
                "loyalty_points": (r >> 54) % 1000,
            },
            "dates": {
                "account_created": profile_ts(created),
                "marketing_optin": profile_ts(created) if optin == OPTIN[0] else None,
                "marketing_optout": profile_ts(updated) if optin == OPTIN[2] else None,
            },
            "update_since": profile_ts(updated),
            "tags": TAGS[(r >> 58) % 4],
            "identities": [{"type": "email", "id": email}] if email else [],
        }
        # Absent keys, not just nulls: the connector must tolerate both.
        if (r >> 60) % 5 != 0:
            profile["customer_id"] = f"C{n:08d}"
        if (r >> 62) == 0:
            profile["middlename"] = "Marie"
            del profile["properties"]["address2"]
        return profile

    def _updated_profile(self, old: dict[str, Any], updated: float) -> dict[str, Any]:
        rng = self.rng
        new = dict(old)
        new["properties"] = dict(old["properties"])
        new["properties"]["city"] = LOCATIONS[rng.randrange(len(LOCATIONS))][2]
        new["lifecycle_status"] = LIFECYCLE[rng.randrange(len(LIFECYCLE))]
        new["seen"] = True
        new["update_since"] = profile_ts(updated)
        return new

    def _new_list(self, i: int, start_epoch: float) -> dict[str, Any]:
        created = start_epoch - (400 - i) * DAY
        return {
            "id": str(3001 + i * 17),
            "title": LIST_TITLES[i % len(LIST_TITLES)],
            "description": None if i % 3 == 2 else f"List number {i}, for testing",
            "status": "ARCHIVED" if i % 4 == 1 else "READY",
            "type": "DYNAMIC" if i % 2 == 0 else "STATIC",
            "size": 0,
            "timestamp_created": profile_ts(created),
            "timestamp_last_refreshed": profile_ts(start_epoch - 3600 * (i + 1)),
            "timestamp_stats_updated": profile_ts(start_epoch - 3600 * (i + 1)),
        }

    def _initial_changes(self, start_epoch: float) -> list[dict[str, Any]]:
        rng = self.rng
        members = rng.sample(self.profiles, min(len(self.profiles), 30))
        changes = []
        for p in members:
            entered = start_epoch - 1 - rng.random() * 60 * DAY
            changes.append(self._change(p, "list_enter", entered))
            if rng.random() < 0.25:
                changes.append(
                    self._change(p, "list_exit", entered + rng.random() * (start_epoch - entered))
                )
        changes.sort(key=itemgetter("timestamp"))
        return changes

    def _change(self, profile: dict[str, Any], event: str, at: float) -> dict[str, Any]:
        return {
            "profile_id": profile["id"],
            "email": profile.get("email"),
            "event": event,
            "timestamp": profile_ts(at),
        }

    def _refresh_size(self, lst: dict[str, Any]) -> None:
        changes = self.list_changes[lst["id"]]
        enters = sum(1 for c in changes if c["event"] == "list_enter")
        lst["size"] = max(0, 2 * enters - len(changes))

    def _new_unsubscribe(self, at: float) -> dict[str, Any]:
        rng = self.rng
        profile = rng.choice(self.profiles)
        reason, reason_text = UNSUB_REASONS[rng.randrange(len(UNSUB_REASONS))]
        mass = rng.random() < 0.6
        unsubscribe_type = UNSUB_TYPES[rng.randrange(len(UNSUB_TYPES))]
        send = rng.getrandbits(32)
        record = {
            "profile_id": profile["id"],
            "email_address": profile.get("email"),
            "type": unsubscribe_type,
            "timestamp": unsubscribe_ts(at),
            "send_id": f"s-{send:08x}",
            "mass_campaign_id": str(rng.randrange(100, 999)) if mass else None,
            "trigger_campaign_id": None if mass else str(rng.randrange(100, 999)),
            "reason": reason,
            "reason_text": reason_text,
        }
        # Ometria returns some unsubscribes that carry an email address but no profile: the
        # key's profile part is then missing (absent, or null).
        if send % 16 == 0:
            del record["profile_id"]
        elif send % 16 == 8:
            record["profile_id"] = None
        return record

    def _new_event(self, at: float) -> dict[str, Any]:
        rng = self.rng
        n = self.next_event
        self.next_event += 1
        r = rng.getrandbits(32)
        profile = self.profiles[r % len(self.profiles)] if self.profiles else {}
        event_type = EVENT_TYPES[(r >> 20) % 8]
        country, region, tz = GEOS[(r >> 23) % 4]
        title, campaign_type = CAMPAIGNS[(r >> 25) % 6]
        engaged = event_type in ("open", "click")
        return {
            "event_id": f"ev-{n:09d}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "to_address": profile.get("email") or f"unknown{n}@example.com",
            "event_type": event_type,
            "dt_occurred": event_ts(at),
            "bounce_class": BOUNCE_CLASSES[(r >> 28) % 3] if event_type == "bounce" else None,
            "reason": "mailbox full" if event_type == "bounce" else None,
            "device_type": DEVICES[(r >> 30) % 4] if engaged else None,
            "geo_country": country if engaged else None,
            "geo_region": region if engaged else None,
            "geo_timezone": tz if engaged else None,
            "target_url": f"https://shop.example.com/p/{n}?utm=a,b"
            if event_type == "click"
            else None,
            "campaign_title": title,
            "campaign_type": campaign_type,
        }
