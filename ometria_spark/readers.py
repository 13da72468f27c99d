"""Spark readers for landed API pages: files -> raw record rows (one per record).

A landed page is one JSON object per file, written by ``landing.py``::

    {"stream": "...", "run_id": "...", "page": 0, "offset": 0, "fetched_at": "...Z",
     "request": {"endpoint": "/profiles", "params": {...}}, "context": {"list_id": "..."},
     "records": [ ...exactly as the API returned them... ]}

Pages are read as whole-file text and parsed with an explicit schema (never inference).
Records are first taken as raw JSON text, then parsed with the table's raw schema, so that
one bad record is quarantined on its own while the rest of the page loads.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from ometria_spark.tables import REQUEST_UPDATE_SINCE, TableSpec
from ometria_spark.transforms import (
    CORRUPT_COLUMN,
    ORDER_COLUMN,
    PROBLEM_COLUMN,
    with_problems,
)

RAW_COLUMN = "_raw"
SOURCE_FILE = "_source_file"
BAD_PAGE = "landed page is not a valid JSON page"

PAGE_SCHEMA = StructType(
    [
        StructField("stream", StringType()),
        StructField("run_id", StringType()),
        StructField("page", LongType()),
        StructField("offset", LongType()),
        StructField("fetched_at", StringType()),
        StructField(
            "request",
            StructType(
                [
                    StructField("endpoint", StringType()),
                    StructField("params", MapType(StringType(), StringType())),
                ]
            ),
        ),
        StructField("context", MapType(StringType(), StringType())),
        # Elements as text: each record's own JSON, parsed per record below.
        StructField("records", ArrayType(StringType())),
    ]
)


def parse_records(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Parse ``_raw`` (one record's JSON text) into the table's raw columns.

    A record that is not a JSON object, or has a scalar where an object belongs, keeps its
    text in ``_corrupt_record``. Other columns of ``df`` are kept.
    """
    schema = StructType([*spec.raw_schema.fields, StructField(CORRUPT_COLUMN, StringType(), True)])
    parsed = F.from_json(
        F.col(RAW_COLUMN),
        schema,
        {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN},
    )
    keep = [c for c in df.columns if c not in schema.fieldNames()]
    # inline(array(...)) parses each record once. Selecting ``parsed[field]`` per field
    # instead lets the optimizer copy from_json into every field's expression: one full
    # JSON parse per field and per later reference (20+ per profile).
    out = df.select(*keep, F.inline(F.array(parsed)))
    # A JSON scalar or array element (not an object) parses to all-NULL: flag it too.
    is_object = F.ltrim(F.col(RAW_COLUMN)).startswith("{")
    corrupt = F.when(is_object, F.col(CORRUPT_COLUMN)).otherwise(F.col(RAW_COLUMN))
    return out.withColumn(CORRUPT_COLUMN, corrupt)


def read_records(spark: SparkSession, paths: list[str], spec: TableSpec) -> DataFrame:
    """Landed page files -> one row per record, with its raw columns and ``_problem``.

    Every record row has ``_source_file``, ``_fetch_order`` and the raw columns (see
    ``page_records``); ``_problem`` says why it cannot load (NULL: loadable) and ``_raw``
    holds its text when it cannot (NULL otherwise, so a cached frame stays small). A page
    that is not a valid JSON page becomes one row with that ``_problem``, its whole text in
    ``_raw`` and a NULL ``_fetch_order``: ``count(_fetch_order)`` counts the records read.
    One pass over the files yields both.
    """
    return page_records(read_pages(spark, paths), spec)


def read_pages(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Whole landed page files -> one row per file: ``_source_file``, ``_text``, ``page``."""
    text = spark.read.text(paths, wholetext=True).select(
        F.col("_metadata.file_path").alias(SOURCE_FILE), F.col("value").alias("_text")
    )
    # Through a generator, so the page is parsed once however many fields are used later.
    page = F.struct(F.from_json("_text", PAGE_SCHEMA).alias("page"))
    return text.select(SOURCE_FILE, "_text", F.inline(F.array(page)))


def page_records(pages: DataFrame, spec: TableSpec) -> DataFrame:
    """Pages (``read_pages``) -> records and unreadable pages, as ``read_records`` says.

    Adds ``_request_update_since`` (profiles' ``updated_at`` fallback) and, for list
    changes, the list id from the request path as the record's ``id``.
    """
    page_ok = F.col("page").isNotNull() & F.col("page.records").isNotNull()
    exploded = (
        pages.select(
            SOURCE_FILE,
            page_ok.alias("_page_ok"),
            F.when(~page_ok, F.col("_text")).alias("_page_text"),
            F.col("page.request.params").getItem("updateSince").alias(REQUEST_UPDATE_SINCE),
            F.col("page.context").getItem("list_id").alias("_context_list_id"),
            F.col("page.fetched_at").alias("_fetched_at"),
            F.col("page.page").alias("_page_number"),
            # _outer: an unreadable page still yields a row (NULL pos), to be quarantined.
            F.posexplode_outer("page.records").alias("_pos", RAW_COLUMN),
        )
        # A valid page without records (the empty last page of a pull) yields nothing.
        .where(F.col("_pos").isNotNull() | ~F.col("_page_ok"))
        .withColumn(
            ORDER_COLUMN,
            F.when(
                F.col("_page_ok"),
                F.struct(
                    F.col("_fetched_at").alias("fetched_at"),
                    F.col("_page_number").alias("page"),
                    F.col("_pos").cast(LongType()).alias("pos"),
                ),
            ),
        )
        .drop("_fetched_at", "_page_number", "_pos")
    )
    records = parse_records(exploded, spec)
    if "id" in records.columns:
        records = records.withColumn("id", F.coalesce(F.col("_context_list_id"), F.col("id")))
    records = records.transform(with_problems(spec))
    problem = F.when(~F.col("_page_ok"), F.lit(BAD_PAGE)).otherwise(F.col(PROBLEM_COLUMN))
    raw = F.when(~F.col("_page_ok"), F.col("_page_text")).when(
        F.col(PROBLEM_COLUMN).isNotNull(), F.col(RAW_COLUMN)
    )
    return (
        records.withColumn(PROBLEM_COLUMN, problem)
        .withColumn(RAW_COLUMN, raw)
        .drop("_context_list_id", "_page_ok", "_page_text")
    )
