"""Pure transforms: raw records (as the API or the export gives them) -> target rows.

Column helpers (``Column -> Column``) come first, then DataFrame steps that chain with
``df.transform``. Nothing here reads, writes, collects or looks at configuration: every input
(source id, account id, write time) is an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, DateType, StringType, TimestampType

from ometria_spark.tables import ACCOUNT_ID, KEY_COLUMN, SOURCE_ID, SYNCED_AT, TableSpec

# Raw columns that readers attach to every record.
RAW_COLUMN = "_raw"  # the record's text, for the quarantine
SOURCE_FILE = "_source_file"  # the landed page or export file it came from
SOURCE_COLUMN = "_source"  # where the source sent it from: the endpoint, or the export file
SERVER_DATE_COLUMN = "_server_date"  # the server's clock when its page was fetched
UNREADABLE_COLUMN = "_unreadable"  # parts of a record of the wrong shape, read as NULL
CORRUPT_COLUMN = "_corrupt_record"  # set when the record does not fit the raw schema
ORDER_COLUMN = "_fetch_order"  # higher = fetched later; the latest version of a key wins
PROBLEM_COLUMN = "_problem"  # why a record is quarantined (NULL: loadable)
BAD_VALUES_COLUMN = "_bad_values"  # target columns whose non-empty raw value did not parse
NOT_A_RECORD = "record does not match the expected shape"

# The timestamp shapes Ometria sends: profiles/lists `2015-11-03T11:48:10+00:00`,
# unsubscribes `2017-05-17 22:08:07+00`, exports `2026-01-01 10:11:12`; a value without an
# offset is UTC. Accepted: a date, optionally `T` or a space and a time with up to 6
# fraction digits, optionally `Z` or an offset `+HH`, `+HHMM` or `+HH:MM` (any case).
TIMESTAMP_SHAPE = (
    r"^\d{4}-\d{2}-\d{2}"  # date
    r"([T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?"  # time
    r"(Z|[+-]\d{2}(:?\d{2})?)?)?$"  # offset
)
TRUE_TEXT = ("true", "1", "yes", "y", "t")
FALSE_TEXT = ("false", "0", "no", "n", "f")


# --- column helpers ---------------------------------------------------------------------


def blank_to_null(col: Column) -> Column:
    """Trimmed text, or NULL when empty: CSV gives empty strings where JSON gives null."""
    trimmed = F.trim(col.cast(StringType()))
    return F.when(trimmed == "", F.lit(None).cast(StringType())).otherwise(col.cast(StringType()))


def parse_timestamp(col: Column) -> Column:
    """Any of Ometria's timestamp shapes -> UTC TIMESTAMP; anything else -> NULL."""
    text = F.upper(F.trim(col.cast(StringType())))
    # The shape check keeps to the shapes above (a cast alone also takes `2026`, `2026-1-1`
    # or a bare time), and the cast then parses without a formatter: one pattern-based
    # try_to_timestamp per shape made the generated code of a profiles row too big for the
    # JIT to compile (and 3x slower). try_cast: ANSI mode, a bad date (02-30) is NULL.
    return F.when(text.rlike(TIMESTAMP_SHAPE), text.try_cast(TimestampType()))


def parse_date(col: Column) -> Column:
    """``YYYY-MM-DD`` (a longer timestamp keeps its UTC date) -> DATE; else NULL."""
    return F.to_date(parse_timestamp(col))


def parse_boolean(col: Column) -> Column:
    """JSON true/false (read as text) and the usual spellings -> BOOLEAN; else NULL."""
    text = F.lower(F.trim(col.cast(StringType())))
    return (
        F.when(text.isin(*TRUE_TEXT), F.lit(True))
        .when(text.isin(*FALSE_TEXT), F.lit(False))
        .otherwise(F.lit(None).cast(BooleanType()))
    )


def sync_key(source_id: str, parts: list[Column]) -> Column:
    """The spec's key: md5 of source_id and the parts concatenated with no separator.

    Each part is the raw text received (a timestamp is not re-formatted); a NULL part
    counts as the empty string, so no row loses its key.
    """
    texts = [F.coalesce(p.cast(StringType()), F.lit("")) for p in parts]
    return F.md5(F.concat(F.lit(source_id), *texts))


def _parse(col: Column, dtype: object) -> Column:
    if isinstance(dtype, TimestampType):
        return parse_timestamp(col)
    if isinstance(dtype, DateType):
        return parse_date(col)
    if isinstance(dtype, BooleanType):
        return parse_boolean(col)
    return col.cast(StringType())


# --- DataFrame steps --------------------------------------------------------------------


def keyable(spec: TableSpec, value: Callable[[str], Column] = F.col) -> Column:
    """True when a record has at least one of its own key parts (not blank): a missing part
    counts as the empty string in the key, but a record with none cannot be keyed."""
    present = [blank_to_null(value(f)).isNotNull() for f in spec.record_key_fields]
    return reduce(lambda a, b: a | b, present)


def with_problems(spec: TableSpec) -> Callable[[DataFrame], DataFrame]:
    """Add ``_problem``: why a record cannot load (not a record, or no key part at all)."""

    def step(df: DataFrame) -> DataFrame:
        problem = F.when(~keyable(spec), F.lit(spec.unkeyable_reason))
        if CORRUPT_COLUMN in df.columns:
            problem = F.when(F.col(CORRUPT_COLUMN).isNotNull(), F.lit(NOT_A_RECORD)).otherwise(
                problem
            )
        return df.withColumn(PROBLEM_COLUMN, problem.cast(StringType()))

    return step


def to_target(
    spec: TableSpec,
    *,
    source_id: str,
    account_id: str,
    synced_at: datetime,
    keep: tuple[str, ...] = (),
) -> Callable[[DataFrame], DataFrame]:
    """Map raw records to the table's columns, in the spec's order and types.

    Also adds ``_bad_values`` (names of columns whose raw text was present but did not
    parse) and keeps ``_fetch_order`` for de-duplication, and the input columns named in
    ``keep`` as they are; ``finalize`` drops all of these.
    """
    clash = [c for c in keep if c in spec.column_names or c in (BAD_VALUES_COLUMN, ORDER_COLUMN)]
    if clash:
        raise ValueError(f"{spec.name}: cannot keep {clash}: output columns of the same name")

    def step(df: DataFrame) -> DataFrame:
        key = sync_key(source_id, [F.col(f) for f in spec.key_fields])
        inputs: list[Column] = []  # the raw text of each parsed (non-string) column
        selected: list[Column] = []
        parsed: list[str] = []
        for column in spec.columns:
            kind = column.source.kind
            if kind == "field":
                raw = blank_to_null(F.col(column.source.path))
                if column.source.fallback and column.source.fallback in df.columns:
                    raw = F.coalesce(raw, blank_to_null(F.col(column.source.fallback)))
                value = _parse(raw, column.type)
                if not isinstance(column.type, StringType):
                    inputs.append(raw.alias(_raw_name(column.name)))
                    parsed.append(column.name)
            elif kind == "key":
                value = key
            elif kind == "account_id":
                value = F.lit(account_id)
            elif kind == "source_id":
                value = F.lit(source_id)
            elif kind == "synced_at":
                value = F.lit(synced_at).cast(TimestampType())
            else:
                raise ValueError(f"{spec.name}.{column.name}: unknown source kind {kind!r}")
            selected.append(value.cast(column.type).alias(column.name))
        order = F.col(ORDER_COLUMN) if ORDER_COLUMN in df.columns else F.lit(0)
        # Two selects: the bad-value check reads the parsed columns instead of parsing each
        # value a second time, and concat of arrays (not a higher-order filter) keeps the
        # whole step in generated code.
        kept = [c for c in keep if c in df.columns]
        extra = [c for c in (UNREADABLE_COLUMN,) if c in df.columns and c not in kept]
        target = df.select(*selected, *inputs, order.alias(ORDER_COLUMN), *kept, *extra)
        bad_values = _bad_values(parsed, unreadable=UNREADABLE_COLUMN in df.columns)
        return target.select(
            *spec.column_names, bad_values.alias(BAD_VALUES_COLUMN), ORDER_COLUMN, *kept
        )

    return step


def _raw_name(column: str) -> str:
    return f"_raw_{column}"


def _bad_values(parsed: list[str], *, unreadable: bool) -> Column:
    """``_bad_values``, read from the output of ``to_target``'s first select: the
    ``parsed`` columns whose raw text (``_raw_<name>``) is set but whose value is NULL,
    then, when ``unreadable``, the record parts of a wrong shape read as NULL
    (``_unreadable``)."""
    bad = [
        F.when(
            F.col(_raw_name(name)).isNotNull() & F.col(name).isNull(), F.array(F.lit(name))
        ).otherwise(F.array().cast("array<string>"))
        for name in parsed
    ]
    if unreadable:
        bad.append(F.coalesce(F.col(UNREADABLE_COLUMN), F.array().cast("array<string>")))
    return F.concat(*bad) if bad else F.array().cast("array<string>")


def latest_per_key(key: str = KEY_COLUMN) -> Callable[[DataFrame], DataFrame]:
    """Keep one row per key: the one fetched last (highest ``_fetch_order``)."""

    def step(df: DataFrame) -> DataFrame:
        order = F.col(ORDER_COLUMN).desc() if ORDER_COLUMN in df.columns else F.lit(0)
        window = Window.partitionBy(key).orderBy(order)
        return df.withColumn("_rank", F.row_number().over(window)).where("_rank = 1").drop("_rank")

    return step


def finalize(spec: TableSpec) -> Callable[[DataFrame], DataFrame]:
    """Only the table's own columns, in order (drops the helper columns)."""

    def step(df: DataFrame) -> DataFrame:
        return df.select(*spec.column_names)

    return step


def validate_columns(df: DataFrame, spec: TableSpec) -> None:
    """Fail loudly, listing what is missing and what exists, before a MERGE."""
    missing = [c for c in spec.column_names if c not in df.columns]
    extra = [c for c in df.columns if c not in spec.column_names]
    if missing or extra:
        raise ValueError(
            f"{spec.name}: columns do not match the spec; missing {missing}, unexpected "
            f"{extra}, have {df.columns}"
        )


__all__ = [
    "ACCOUNT_ID",
    "BAD_VALUES_COLUMN",
    "CORRUPT_COLUMN",
    "ORDER_COLUMN",
    "PROBLEM_COLUMN",
    "SOURCE_ID",
    "SYNCED_AT",
    "blank_to_null",
    "finalize",
    "latest_per_key",
    "parse_boolean",
    "parse_date",
    "parse_timestamp",
    "split_loadable",
    "sync_key",
    "to_target",
    "validate_columns",
    "with_problems",
]


def split_loadable(df: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(records that can load, records to quarantine) after ``with_problems``."""
    problem = F.col(PROBLEM_COLUMN)
    return df.where(problem.isNull()).drop(PROBLEM_COLUMN), df.where(problem.isNotNull())


def has_repeated_keys(source: DataFrame) -> bool:
    """True when two rows share a key (a job of its own: ``writer.SourceCounts`` saves it)."""
    repeated = source.groupBy(KEY_COLUMN).count().where(F.col("count") > 1)
    return repeated.limit(1).count() > 0


def collapsed_records(source: DataFrame, spec: TableSpec) -> int:
    """How many records share their key with another record that differs in the spec's
    collision columns (re-reads of one record do not count): per key, distinct - 1."""
    if not spec.collision_columns:
        return 0
    distinct = F.count_distinct(F.struct(*[F.col(c) for c in spec.collision_columns]))
    per_key = source.groupBy(KEY_COLUMN).agg(distinct.alias("versions"))
    total = per_key.agg(F.sum(F.col("versions") - 1)).first()
    return int(total[0] or 0) if total is not None else 0
