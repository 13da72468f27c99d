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
from ometria_spark.transforms import CORRUPT_COLUMN, ORDER_COLUMN, PROBLEM_COLUMN

RAW_COLUMN = "_raw"
SOURCE_FILE = "_source_file"

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
    # A JSON scalar or array element (not an object) parses to all-NULL: flag it too.
    is_object = F.ltrim(F.col(RAW_COLUMN)).startswith("{")
    corrupt = F.when(is_object, parsed[CORRUPT_COLUMN]).otherwise(F.col(RAW_COLUMN))
    keep = [c for c in df.columns if c not in spec.raw_schema.fieldNames()]
    return df.select(
        *keep,
        *[parsed[f.name].alias(f.name) for f in spec.raw_schema.fields],
        corrupt.alias(CORRUPT_COLUMN),
    )


def read_pages(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Whole landed page files -> one row per file: ``_source_file``, ``_text``, ``page``."""
    text = spark.read.text(paths, wholetext=True).select(
        F.col("_metadata.file_path").alias(SOURCE_FILE), F.col("value").alias("_text")
    )
    return text.withColumn("page", F.from_json("_text", PAGE_SCHEMA))


def bad_pages(pages: DataFrame) -> DataFrame:
    """Pages that are not valid JSON envelopes: quarantined whole, with their text."""
    return pages.where(F.col("page").isNull() | F.col("page.records").isNull()).select(
        SOURCE_FILE,
        F.lit("landed page is not a valid JSON page").alias(PROBLEM_COLUMN),
        F.col("_text").alias(RAW_COLUMN),
    )


def page_records(pages: DataFrame, spec: TableSpec) -> DataFrame:
    """Valid pages -> one row per record with its raw columns and fetch order.

    Adds ``_request_update_since`` (profiles' ``updated_at`` fallback) and, for list
    changes, the list id from the request path as the record's ``id``.
    """
    exploded = (
        pages.where(F.col("page.records").isNotNull())
        .select(SOURCE_FILE, "page", F.posexplode("page.records").alias("pos", "record"))
        .select(
            SOURCE_FILE,
            F.col("page.request.params").getItem("updateSince").alias(REQUEST_UPDATE_SINCE),
            F.col("page.context").getItem("list_id").alias("_context_list_id"),
            F.struct(
                F.col("page.fetched_at").alias("fetched_at"),
                F.col("page.page").alias("page"),
                F.col("pos").cast(LongType()).alias("pos"),
            ).alias(ORDER_COLUMN),
            F.col("record").alias(RAW_COLUMN),
        )
    )
    records = parse_records(exploded, spec)
    if "_context_list_id" in records.columns and "id" in records.columns:
        records = records.withColumn("id", F.coalesce(F.col("_context_list_id"), F.col("id")))
    return records.drop("_context_list_id")
