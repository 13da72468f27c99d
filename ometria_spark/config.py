"""Typed configuration, loaded from YAML, validated at start.

Every key is documented in ``conf/example.yaml`` and the README. A missing required key, an
unknown key or a value of the wrong type raises ``ConfigError`` naming the key (``api.page_size``).
Secrets are never in the file: ``api.key_env`` names an environment variable, and on Databricks
``api.key_secret_scope`` / ``api.key_secret_key`` name a secret.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def all_streams() -> tuple[str, ...]:
    """Every stream's name, in run order (``ometria_spark.streams``, which imports this)."""
    from ometria_spark.streams import names

    return names()


class ConfigError(ValueError):
    """A configuration problem, naming the key at fault."""


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = "https://api.ometria.com/v2"
    key_env: str = "OMETRIA_API_KEY"
    requests_per_second: float = 4.0
    page_size: int = 250
    timeout_seconds: float = 30.0
    max_attempts: int = 8
    # A Retry-After longer than this fails the stream (with the reason) instead of parking
    # the run, and its lock, for as long as the server asks.
    max_retry_wait_seconds: float = 300.0
    key_secret_scope: str | None = None
    key_secret_key: str | None = None


@dataclass(frozen=True)
class ExportsConfig:
    email_events_path: str | None = None
    format: str = "csv"
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # 0: every run lists the whole export root. N > 0 (for date folders, YYYY/MM/DD/):
    # between full listings N hours apart, a run lists only the folder of the newest file
    # seen and what sorts after it; a file landing in a folder that sorts before it is
    # found by the next full listing, at most N hours later.
    full_listing_hours: float = 0.0


@dataclass(frozen=True)
class StorageConfig:
    raw_path: str = ""
    tables_path: str | None = None
    catalog: str | None = None
    schema: str = "ometria"
    # For a landing zone (and path tables) on an S3-compatible store: its endpoint. Scoped
    # to the buckets of raw_path and tables_path, as exports.s3_endpoint is to the exports'.
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # Merged pulls (raw pages) older than this many days are deleted by the run; unmerged
    # pulls never are. None keeps every pull.
    raw_retention_days: int | None = 7


@dataclass(frozen=True)
class SyncConfig:
    streams: tuple[str, ...] = field(default_factory=all_streams)
    # An instant (see INSTANT_KEYS): normalised to UTC ``YYYY-MM-DDTHH:MM:SS`` text.
    start_date: str = "2015-01-01T00:00:00"
    lookback_minutes: int = 60
    unsubscribes_window_days: int = 30
    # The run lock's lease: renewed every third of it while a run works; a killed run
    # blocks the next one for at most this long.
    lock_lease_seconds: int = 300


@dataclass(frozen=True)
class MaintenanceConfig:
    # VACUUM of `maintain`: files no version younger than this needs are deleted (Delta's
    # default, 7 days; less needs Delta's retention check off, which the call sets).
    vacuum_retention_hours: float = 168.0
    # VACUUM of `erase`: 0 deletes the erased rows' files at once (and older versions).
    erase_retention_hours: float = 0.0


@dataclass(frozen=True)
class Config:
    account_id: str
    source_id: str
    api: ApiConfig = field(default_factory=ApiConfig)
    exports: ExportsConfig = field(default_factory=ExportsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)

    def table_location(self, table: str) -> str:
        """The path (path mode) or the qualified name (managed mode) of a table."""
        if self.storage.tables_path:
            return f"{self.storage.tables_path.rstrip('/')}/{table}"
        return self.table_name(table)

    def uses_s3a(self) -> bool:
        """True when a configured path is on S3 (the session then needs hadoop-aws)."""
        paths = [self.storage.raw_path, self.storage.tables_path]
        if "email_events" in self.sync.streams:
            paths.append(self.exports.email_events_path)
        return any(p and p.startswith(("s3a://", "s3://")) for p in paths)

    def table_name(self, table: str) -> str:
        """The catalog name of a table: ``[catalog.]schema.table``."""
        parts = [self.storage.catalog, self.storage.schema, table]
        return ".".join(p for p in parts if p)


REQUIRED: tuple[str, ...] = ("account_id", "source_id", "storage.raw_path")
# Keys that hold a date or a time: YAML's unquoted dates and datetimes are accepted as well
# as text; a date is its midnight UTC, a time without an offset is UTC.
INSTANT_KEYS: frozenset[str] = frozenset({"sync.start_date"})
# Keys of earlier versions that a config may still hold: accepted, ignored, warned about.
RETIRED_KEYS: dict[str, str] = {
    "sync.lock_timeout_minutes": "the run lock is a lease now (sync.lock_lease_seconds)",
}
INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S"


def parse_instant(key: str, value: Any) -> str:
    """A configured date or time -> UTC ``YYYY-MM-DDTHH:MM:SS``; ``ConfigError`` naming the
    key when it cannot be read."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = (
                dt.datetime.fromisoformat(text)
                if len(text) > 10
                else dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
            )
        except ValueError:
            raise ConfigError(
                f"{key}: not a date or time (YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SS with an "
                f"optional offset): {value!r}"
            ) from None
    else:
        raise ConfigError(f"{key}: expected a date or time, got {type(value).__name__} ({value!r})")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime(INSTANT_FORMAT)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, but an unquoted value that looks like a date and is none
    (``2026-13-01``) stays text, for the key's own check to name it (PyYAML would raise a
    bare ValueError naming no key)."""

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:
        try:
            return super().construct_yaml_timestamp(node)  # type: ignore[arg-type]
        except ValueError:
            return self.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def load_config(path: str | Path, overrides: Mapping[str, str] | None = None) -> Config:
    """Load a YAML file, apply ``key=value`` overrides (dotted keys), and validate."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = _yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for dotted, raw in (overrides or {}).items():
        try:
            value = _yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself, checked as the key's value
        _set_dotted(data, dotted, value)
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a validated ``Config`` from plain data (as parsed from YAML)."""
    config = _build(Config, data, prefix="")
    for key in REQUIRED:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value in (None, ""):
            raise ConfigError(f"{key}: required key is missing")
    _check_values(config)
    return config


def _check_values(config: Config) -> None:
    known = all_streams()
    unknown = [s for s in config.sync.streams if s not in known]
    if unknown:
        raise ConfigError(f"sync.streams: unknown stream(s) {unknown}; known: {list(known)}")
    if config.exports.format not in ("csv", "json"):
        raise ConfigError(f"exports.format: must be 'csv' or 'json', got {config.exports.format!r}")
    if config.api.requests_per_second <= 0:
        raise ConfigError("api.requests_per_second: must be > 0")
    if not 1 <= config.api.page_size <= 250:
        raise ConfigError("api.page_size: must be between 1 and 250 (the API's maximum)")
    if config.api.max_attempts < 1:
        raise ConfigError("api.max_attempts: must be >= 1")
    if config.api.max_retry_wait_seconds < 0:
        raise ConfigError("api.max_retry_wait_seconds: must be >= 0")
    if config.sync.lookback_minutes < 0:
        raise ConfigError("sync.lookback_minutes: must be >= 0")
    if config.storage.raw_retention_days is not None and config.storage.raw_retention_days < 0:
        raise ConfigError("storage.raw_retention_days: must be >= 0 (or null: keep every pull)")
    if config.exports.full_listing_hours < 0:
        raise ConfigError("exports.full_listing_hours: must be >= 0")
    for key in ("vacuum_retention_hours", "erase_retention_hours"):
        if getattr(config.maintenance, key) < 0:
            raise ConfigError(f"maintenance.{key}: must be >= 0")
    if config.sync.lock_lease_seconds < 3:
        raise ConfigError("sync.lock_lease_seconds: must be >= 3")
    if config.sync.unsubscribes_window_days < 1:
        raise ConfigError("sync.unsubscribes_window_days: must be >= 1")
    if "email_events" in config.sync.streams and not config.exports.email_events_path:
        raise ConfigError(
            "exports.email_events_path: required when sync.streams includes email_events"
        )
    if bool(config.api.key_secret_scope) != bool(config.api.key_secret_key):
        raise ConfigError("api.key_secret_scope and api.key_secret_key: set both or neither")
    endpoints: dict[str, tuple[str, str | None]] = {}
    for key, path in s3_buckets(config):
        endpoint = (
            config.exports.s3_endpoint if key.startswith("exports.") else config.storage.s3_endpoint
        )
        bucket = _bucket(path)
        if bucket in endpoints and endpoints[bucket][1] != endpoint:
            raise ConfigError(
                f"{key}: bucket {bucket} is also in {endpoints[bucket][0]}, with another "
                "S3 endpoint (exports.s3_endpoint / storage.s3_endpoint): one bucket, one endpoint"
            )
        endpoints.setdefault(bucket, (key, endpoint))


def _bucket(path: str) -> str:
    return path.split("://", 1)[1].split("/", 1)[0]


def s3_buckets(config: Config) -> list[tuple[str, str]]:
    """``(config key, path)`` of every configured S3 path, exports first."""
    paths = [
        ("exports.email_events_path", config.exports.email_events_path),
        ("storage.raw_path", config.storage.raw_path),
        ("storage.tables_path", config.storage.tables_path),
    ]
    return [(k, p) for k, p in paths if p and p.startswith(("s3a://", "s3://"))]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or '<top>'}: expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if not _retired(f"{prefix}{k}")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (known here: {', '.join(sorted(fields))})"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if key in INSTANT_KEYS:
            values[name] = parse_instant(key, value)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value if value is not None else {}, f"{key}.")
        else:
            values[name] = _coerce(key, hint, value)
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: required key is missing")
    return cls(**values)


def _retired(key: str) -> bool:
    """True (with a warning) for a key an earlier version read and this one ignores."""
    if key not in RETIRED_KEYS:
        return False
    log.warning("%s: no longer used, ignored: %s", key, RETIRED_KEYS[key])
    return True


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        # YAML reads `account_id: 1234` as a number; ids are text.
        return str(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{key}: expected {hint.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value
