"""The integration specification as data: one entry per target table.

For each table: its columns in the spec's order with their types, where each column comes
from, and the fields of its key. Transforms, readers and the writer read this module;
nothing else names a target column. Types follow ``ometria-sources.md`` section 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

KEY_COLUMN = "__sync_key"
SYNCED_AT = "__synced_at"
ACCOUNT_ID = "_account_id"
SOURCE_ID = "__source_id"

# Delta table properties of every new data table (see ``TableSpec.properties``).
DATA_TABLE_PROPERTIES: dict[str, str] = {"delta.enableDeletionVectors": "true"}


@dataclass(frozen=True)
class Source:
    """Where a column's value comes from.

    kind: ``field`` (a dotted path into the raw record), ``key`` (the md5 sync key),
    ``account_id`` / ``source_id`` (configuration) or ``synced_at`` (the write time).
    ``fallback`` names a raw column used when the field is NULL (profiles' ``updated_at``
    falls back to the ``updateSince`` bound the page was requested with).
    """

    kind: str
    path: str = ""
    fallback: str | None = None


@dataclass(frozen=True)
class Column:
    name: str
    type: DataType
    source: Source


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    # Raw fields concatenated after source_id, in order, to form the md5 key. A missing part
    # counts as the empty string (ometria-sources.md, section 3): a record is loadable when
    # it has at least one of its own key parts (``record_key_fields``); only a record with
    # none of them cannot be keyed, and is quarantined.
    key_fields: tuple[str, ...]
    # Key parts that come from the request, not the record (member_lists: the list id).
    context_fields: tuple[str, ...] = ()
    # Target columns that tell two source records apart when the spec's key makes them one
    # row (two campaigns emailing one address in one second): counted as collapsed.
    collision_columns: tuple[str, ...] = ()
    # Delta liquid-clustering columns (email events: by time, so a MERGE of new events
    # can skip the files of old ones).
    cluster_by: tuple[str, ...] = ()

    @property
    def record_key_fields(self) -> tuple[str, ...]:
        """The key parts a record carries itself: it is loadable when one is not blank."""
        return tuple(f for f in self.key_fields if f not in self.context_fields)

    @property
    def unkeyable_reason(self) -> str:
        """The quarantine reason of a record without any of its own key parts."""
        fields = self.record_key_fields
        if len(fields) == 1:
            return f"missing required field '{fields[0]}'"
        return f"missing every key field ({', '.join(fields)})"

    @property
    def properties(self) -> dict[str, str]:
        """Delta table properties a new table is created with (an existing one keeps its own).

        - Deletion vectors: a MERGE that updates rows scattered over the table marks them
          deleted in small DV files and writes only the changed rows, instead of rewriting
          every file that holds one (a 1% update touches every file of a large table).
          Readers must support them: Delta Lake 2.3+, Databricks Runtime 12.2+ (not the
          delta-rs `deltalake` package as of 1.6).
        - Statistics only on the key and the time columns:
          min/max of ~20 free-text columns cost about a third of the write, and no MERGE
          or likely query can skip files by them; the time columns do prune (email events
          are clustered by ``event_at``, which needs its statistics). None on a column
          that names or describes a person (email, ids, ``date_of_birth``): statistics
          stay in the Delta log after the rows are erased (``erase``).
        """
        times = (c.name for c in self.columns if isinstance(c.type, TimestampType))
        stats = [KEY_COLUMN, *times]
        return {**DATA_TABLE_PROPERTIES, "delta.dataSkippingStatsColumns": ",".join(stats)}

    @property
    def schema(self) -> StructType:
        return StructType([StructField(c.name, c.type, nullable=True) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def raw_schema(self) -> StructType:
        """The shape records are read with: every mapped leaf (and key part) as a string.

        Strings everywhere let a bad value (``"seen": "yes"``) reach the cast, where it
        becomes a counted NULL, instead of failing the whole record; a nested path
        becomes a struct, so a string where an object belongs is caught as a bad shape.
        """
        paths = [c.source.path for c in self.columns if c.source.kind == "field"]
        paths += list(self.key_fields)
        return _nested_schema(paths)


def _nested_schema(paths: list[str]) -> StructType:
    tree: dict[str, dict] = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
    return _to_struct(tree)


def _to_struct(tree: dict[str, dict]) -> StructType:
    return StructType(
        [
            StructField(name, _to_struct(child) if child else StringType(), True)
            for name, child in tree.items()
        ]
    )


def _f(name: str, path: str, dtype: DataType | None = None, fallback: str | None = None) -> Column:
    return Column(name, dtype or StringType(), Source("field", path, fallback))


def _key(name: str = KEY_COLUMN) -> Column:
    return Column(name, StringType(), Source("key"))


_METADATA = (
    Column(ACCOUNT_ID, StringType(), Source("account_id")),
    Column(SOURCE_ID, StringType(), Source("source_id")),
    _key(),
    Column(SYNCED_AT, TimestampType(), Source("synced_at")),
)
_TS = TimestampType()

# Raw column that the reader adds to profile records: the request's updateSince bound.
REQUEST_UPDATE_SINCE = "_request_update_since"

PROFILES = TableSpec(
    name="profiles",
    columns=(
        _f("profile_id", "id"),
        _f("email", "email"),
        _f("phone_number", "phone_number"),
        _f("customer_id", "customer_id"),
        _f("customer_name", "name"),
        _f("last_name", "lastname"),
        _f("first_name", "firstname"),
        _f("gender", "gender"),
        _f("country", "country"),
        _f("marketing_optin", "marketing_optin"),
        _f("timezone", "timezone"),
        _f("date_of_birth", "date_of_birth", DateType()),
        _f("seen", "seen", BooleanType()),
        _f("lifecycle_status", "lifecycle_status"),
        _f("is_email_valid", "is_email_valid", BooleanType()),
        _f("zipcode", "properties.zip"),
        _f("city", "properties.city"),
        _f("address1", "properties.address1"),
        _f("address2", "properties.address2"),
        _f("state", "properties.province"),
        _f("shopify_tags", "properties.shopify_tags"),
        _f("account_created_date", "dates.account_created", _TS),
        _f("updated_at", "update_since", _TS, fallback=REQUEST_UPDATE_SINCE),
        _f("marketing_optin_date", "dates.marketing_optin", _TS),
        _f("marketing_optout_date", "dates.marketing_optout", _TS),
        *_METADATA,
    ),
    key_fields=("id",),
)

MEMBER_LISTS = TableSpec(
    name="member_lists",
    columns=(
        _key("member_list_id"),
        _f("list_id", "id"),
        _f("profile_id", "profile_id"),
        _f("email", "email"),
        _f("event_at", "timestamp", _TS),
        _f("event", "event"),
        *_METADATA,
    ),
    # `id` is the list id, taken from the request path (/lists/{id}/changes) by the reader.
    key_fields=("id", "profile_id", "timestamp"),
    context_fields=("id",),
    # A list enter and exit of one profile in one second; changes without a profile id.
    collision_columns=("event", "email"),
)

LISTS = TableSpec(
    name="lists",
    columns=(
        _f("list_id", "id"),
        _f("list_title", "title"),
        _f("list_description", "description"),
        _f("list_status", "status"),
        _f("list_type", "type"),
        _f("created_at", "timestamp_created", _TS),
        _f("updated_at", "timestamp_stats_updated", _TS),
        *_METADATA,
    ),
    key_fields=("id",),
)

EMAIL_EVENTS = TableSpec(
    name="email_events",
    columns=(
        _key("email_event_id"),
        _f("event_id", "event_id"),
        _f("send_id", "uuid"),
        _f("email", "to_address"),
        _f("event_type", "event_type"),
        _f("event_at", "dt_occurred", _TS),
        _f("bounce_class", "bounce_class"),
        _f("bounce_reason", "reason"),
        _f("device_type", "device_type"),
        _f("geo_country", "geo_country"),
        _f("geo_region", "geo_region"),
        _f("geo_timezone", "geo_timezone"),
        _f("target_url", "target_url"),
        _f("campaign_title", "campaign_title"),
        _f("campaign_type", "campaign_type"),
        *_METADATA,
    ),
    key_fields=("to_address", "event_type", "dt_occurred"),
    # Two sends (campaigns) to one address in one second.
    collision_columns=("event_id", "send_id"),
    cluster_by=("event_at",),
)

UNSUBSCRIBES = TableSpec(
    name="unsubscribes",
    columns=(
        _key("unsubscribe_id"),
        _f("profile_id", "profile_id"),
        _f("email", "email_address"),
        _f("event_at", "timestamp", _TS),
        _f("send_id", "send_id"),
        _f("mass_campaign_id", "mass_campaign_id"),
        _f("trigger_campaign_id", "trigger_campaign_id"),
        _f("unsubscribe_reason", "reason"),
        _f("unsubscribe_reason_text", "reason_text"),
        *_METADATA,
    ),
    key_fields=("profile_id", "timestamp"),
    # Unsubscribes without a profile id (Ometria sends some with only an email address) of
    # two addresses in one second; two sends unsubscribed from in one second.
    collision_columns=("email", "send_id"),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in (PROFILES, MEMBER_LISTS, LISTS, EMAIL_EVENTS, UNSUBSCRIBES)
}
