"""What each path of the emulated v2 API answers: routing, parameter checks and paging.

No HTTP here: ``V2Endpoints._route`` turns a path and its query parameters into a status and
a JSON-ready body read from a ``Dataset``. ``EmulatorServer`` builds on it with the socket,
the auth check, the rate limit and the injected faults.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ometria_spark.emulator.dataset import Dataset

PREFIX = "/v2"
PROFILE_DEFAULT_LIMIT = 10
PROFILE_MAX_LIMIT = 250


class BadRequest(Exception):
    """A request the API refuses with 400; the message becomes the answer's ``error``."""


def _parse_instant(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} is not a timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _status(record: Any) -> Any:
    return record.get("status") if isinstance(record, dict) else None


def _int_param(params: dict[str, str], name: str, default: int | None) -> int | None:
    if name not in params:
        return default
    try:
        value = int(params[name])
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


class V2Endpoints:
    """The v2 endpoints over a ``Dataset``, with quirks of a careless API to switch on.

    ``ignore_offset`` answers every page from the first record, ``page_caps`` puts fewer
    records in a page than its limit asks for, ``odd_list_elements`` follow the lists in
    ``/lists``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.ignore_offset = False
        # Most records a page holds, whatever the limit: {"profiles"|"changes"|"unsubscribes": n}
        self.page_caps: dict[str, int] = {}
        # Elements /lists answers after the lists, as a careless API might: "x", None, {}...
        self.odd_list_elements: list[Any] = []
        # (dataset version, updateSince bound, matching profiles), so that the pages of one
        # pull filter the profiles once.
        self._profile_cache: tuple[int, str, list[dict[str, Any]]] | None = None

    def _route(self, path: str, params: dict[str, str]) -> tuple[int, Any]:
        """The status and body answering a GET of ``path`` with query ``params``.

        Raises ``BadRequest`` for parameters the API refuses. ``EmulatorServer`` calls it
        through the instance, so a test can wrap it to change the account mid-request.
        """
        if not path.startswith(PREFIX + "/"):
            return 404, {"error": "not found"}
        parts = path[len(PREFIX) + 1 :].strip("/").split("/")
        with self.dataset.lock:
            if parts == ["profiles"]:
                return 200, self._profiles(params)
            if parts == ["lists"]:
                return 200, self._lists(params)
            if len(parts) == 3 and parts[0] == "lists" and parts[2] == "changes":
                changes = self.dataset.list_changes.get(parts[1])
                if changes is None:
                    return 404, {"error": f"list {parts[1]} not found"}
                return 200, self._list_changes(changes, params)
            if parts == ["unsubscribes"]:
                return 200, self._unsubscribes(params)
        return 404, {"error": "not found"}

    def _page(
        self,
        records: list[dict[str, Any]],
        params: dict[str, str],
        default_limit: int | None,
        kind: str,
    ) -> list[dict[str, Any]]:
        limit = _int_param(params, "limit", default_limit)
        offset = _int_param(params, "offset", 0) or 0
        if self.ignore_offset:
            offset = 0
        cap = self.page_caps.get(kind)
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        if limit is None:
            return records[offset:]
        return records[offset : offset + limit]

    def _profiles(self, params: dict[str, str]) -> list[dict[str, Any]]:
        limit = _int_param(params, "limit", PROFILE_DEFAULT_LIMIT)
        if limit is not None and limit > PROFILE_MAX_LIMIT:
            raise BadRequest(f"limit must be at most {PROFILE_MAX_LIMIT}")
        records = self.dataset.profiles
        if "updateSince" in params:
            since = _parse_instant(params["updateSince"], "updateSince").isoformat()
            # All update_since values share one format, so string order is time order.
            cached = self._profile_cache
            if cached and cached[0] == self.dataset.version and cached[1] == since:
                records = cached[2]
            else:
                # A profile without update_since is returned by every updateSince query
                # (the connector then stamps it with the query's bound).
                records = [p for p in records if (p.get("update_since") or "\uffff") >= since]
                self._profile_cache = (self.dataset.version, since, records)
        return self._page(records, params, PROFILE_DEFAULT_LIMIT, "profiles")

    def _lists(self, params: dict[str, str]) -> list[dict[str, Any]]:
        mode = params.get("mode", "active")
        if mode == "all":
            lists = list(self.dataset.lists)
        elif mode == "active":
            lists = [x for x in self.dataset.lists if _status(x) != "ARCHIVED"]
        elif mode == "archived":
            lists = [x for x in self.dataset.lists if _status(x) == "ARCHIVED"]
        else:
            raise BadRequest("mode must be active, archived or all")
        return lists + list(self.odd_list_elements)

    def _list_changes(
        self, changes: list[dict[str, Any]], params: dict[str, str]
    ) -> list[dict[str, Any]]:
        if "since" not in params:
            raise BadRequest("since is required")
        since = _parse_instant(params["since"], "since").isoformat()
        return self._page([c for c in changes if c["timestamp"] >= since], params, None, "changes")

    def _unsubscribes(self, params: dict[str, str]) -> list[dict[str, Any]]:
        if "since" not in params:
            raise BadRequest("since is required")
        fmt = "%Y-%m-%d %H:%M:%S+00"
        since = _parse_instant(params["since"], "since").strftime(fmt)
        before = (
            _parse_instant(params["before"], "before").strftime(fmt)
            if "before" in params
            else "9999"
        )
        selected = [u for u in self.dataset.unsubscribes if since <= u["timestamp"] < before]
        return self._page(selected, params, None, "unsubscribes")
