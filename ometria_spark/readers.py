"""Spark readers for landed API pages: files -> raw record rows (one per record).

A landed page is one JSON object per file, written by ``landing.py``::

    {"stream": "...", "run_id": "...", "page": 0, "offset": 0, "fetched_at": "...Z",
     "request": {"endpoint": "/profiles", "params": {...}}, "context": {"list_id": "..."},
     "records": [ ...exactly as the API returned them... ]}

Pages are read as whole-file text and parsed with an explicit schema (never inference):
the records as the table's raw records, in one parse per page. A page where that does not
fit, or that holds a record without its required fields, is parsed again with its records
as JSON text, each then parsed on its own, so that one bad record is quarantined alone
(with its text) while the rest of the page loads.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from ometria_spark.spark import hadoop_conf, hadoop_path, literal_path, local_frame
from ometria_spark.tables import REQUEST_UPDATE_SINCE, TableSpec
from ometria_spark.transforms import (
    CORRUPT_COLUMN,
    ORDER_COLUMN,
    PROBLEM_COLUMN,
    RAW_COLUMN,
    SERVER_DATE_COLUMN,
    SOURCE_COLUMN,
    SOURCE_FILE,
    UNREADABLE_COLUMN,
    keyable,
    with_problems,
)

BAD_PAGE = "landed page is not a valid JSON page"
CORRUPT_PAGE = "_corrupt_page"

PAGE_SCHEMA = StructType(
    [
        StructField("stream", StringType()),
        StructField("run_id", StringType()),
        StructField("page", LongType()),
        StructField("offset", LongType()),
        StructField("fetched_at", StringType()),
        StructField("server_date", StringType()),
        StructField("repeats", ArrayType(LongType())),
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
    """Parse ``_raw`` (one record's JSON text) into the table's raw columns (records that
    do not come in landed pages: the tests' raw records).

    A record that is not a JSON object keeps its text in ``_corrupt_record``; one with a
    part of the wrong shape is read as ``with_shape_checks`` says. Other columns of ``df``
    are kept.
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
    return out.transform(with_shape_checks(spec))


def read_records(spark: SparkSession, paths: list[str], spec: TableSpec) -> DataFrame:
    """Landed page files -> one row per record, with its raw columns and ``_problem``.

    Every record row has ``_fetch_order`` and the raw columns (see ``page_records``);
    ``_problem`` says why it cannot load (NULL: loadable), and then ``_raw`` holds its text
    and ``_source_file`` its page file (both NULL otherwise: only the quarantine reads
    them, and a kept frame stays small). A page that is not a valid JSON page becomes one
    row with that ``_problem``, its whole text in ``_raw`` and a NULL ``_fetch_order``:
    ``count(_fetch_order)`` counts the records read. One pass over the files yields both.
    """
    return page_records(read_pages(spark, paths, spec), spec)


def page_schema(spec: TableSpec) -> StructType:
    """A landed page with its records parsed as the table's raw records, and
    ``_corrupt_page`` (the page's text) when any part of the page does not fit."""
    fields = [
        StructField("records", ArrayType(spec.raw_schema)) if f.name == "records" else f
        for f in PAGE_SCHEMA.fields
    ]
    return StructType([*fields, StructField(CORRUPT_PAGE, StringType())])


def read_pages(spark: SparkSession, paths: list[str], spec: TableSpec) -> DataFrame:
    """Whole landed page files -> one row per file: ``_source_file``, ``_text``, ``page``
    (parsed with ``page_schema``)."""
    text = spark.read.text([literal_path(p) for p in paths], wholetext=True).select(
        F.col("_metadata.file_path").alias(SOURCE_FILE), F.col("value").alias("_text")
    )
    empty = empty_files(spark, paths)
    if empty:  # Spark reads no row from an empty file: it is an unreadable page all the same
        text = text.unionByName(local_frame(spark, [(p, "") for p in empty], text.schema))
    parsed = F.from_json(
        "_text",
        page_schema(spec),
        {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_PAGE},
    )
    # Through a generator, so the page is parsed once however many fields are used later.
    return text.select(SOURCE_FILE, "_text", F.inline(F.array(F.struct(parsed.alias("page")))))


def empty_files(spark: SparkSession, paths: list[str]) -> list[str]:
    """The zero-byte files among ``paths`` (as their qualified paths): one listing of each
    folder (a pull's pages share one)."""
    conf = hadoop_conf(spark)
    wanted: dict[str, set[str]] = {}
    for path in paths:
        folder, name = path.rstrip("/").rsplit("/", 1)
        wanted.setdefault(folder, set()).add(name)
    empty = []
    for folder, names in wanted.items():
        hadoop_folder = hadoop_path(spark, folder)
        for status in hadoop_folder.getFileSystem(conf).listStatus(hadoop_folder):
            if status.isFile() and status.getLen() == 0 and status.getPath().getName() in names:
                empty.append(str(status.getPath().toString()))
    return sorted(empty)


def page_records(pages: DataFrame, spec: TableSpec) -> DataFrame:
    """Pages (``read_pages``) -> records and unreadable pages, as ``read_records`` says.

    Adds ``_request_update_since`` (profiles' ``updated_at`` fallback) and, for list
    changes, the list id from the request path as the record's ``id``.

    Two paths, one pass. A page whose records all fit the raw schema and all have their
    required fields (nearly every page) is used as parsed: one JSON parse per page. Any
    other page is parsed again with its records as text, and each record on its own, so
    that a bad record is quarantined alone, with its text, while the rest of its page
    loads.
    """
    items = _page_items(_staged_pages(pages, spec), spec)
    records = _record_rows(items, spec)
    records = records.transform(with_shape_checks(spec)).transform(with_problems(spec))
    return _with_page_problems(records)


def _valid_utf8() -> Column:
    # The landing writes UTF-8; a page that is not was damaged since, and Spark would read
    # its bad bytes as U+FFFD, silently: such a page is unreadable, as one not JSON is.
    return F.is_valid_utf8("_text")


def _staged_pages(pages: DataFrame, spec: TableSpec) -> DataFrame:
    """Pages with ``_fast`` (the page is used as parsed: valid UTF-8 and JSON, its records
    all loadable) and ``_slow``: any other page parsed again with its records as text."""

    def loadable(record: Column) -> Column:
        return record.isNotNull() & keyable(spec, lambda field: record[field])

    fast = (
        _valid_utf8()
        & F.col(f"page.{CORRUPT_PAGE}").isNull()
        & F.col("page.records").isNotNull()
        & F.forall("page.records", loadable)
    )
    # The second parse only for the other pages (CASE WHEN evaluates only its branch),
    # behind a generator so that it runs once per page.
    slow = F.when(~F.col("_fast"), F.from_json("_text", PAGE_SCHEMA))
    return pages.select(SOURCE_FILE, "_text", "page", fast.alias("_fast")).select(
        SOURCE_FILE, "_text", "page", "_fast", F.inline(F.array(F.struct(slow.alias("_slow"))))
    )


def _page_items(staged: DataFrame, spec: TableSpec) -> DataFrame:
    """Staged pages (``_staged_pages``) -> one row per record to deliver (``_pos``, and
    ``_item``: the record as parsed or as text), with its page's envelope, and one row per
    unreadable page (``_page_ok`` false, its text in ``_page_text``)."""
    slow_ok = F.col("_slow").isNotNull() & F.col("_slow.records").isNotNull() & _valid_utf8()
    page_ok = F.col("_fast") | slow_ok

    def envelope(field: str) -> Column:
        return F.when(F.col("_fast"), F.col(f"page.{field}")).otherwise(F.col(f"_slow.{field}"))

    # One array per page to explode: (record as parsed, NULL) from a fast page, (NULL,
    # record text) from another one.
    fast_items = F.arrays_zip(
        F.col("page.records").alias("rec"),
        F.array_repeat(F.lit(None).cast(StringType()), F.size("page.records")).alias("txt"),
    )
    slow_items = F.arrays_zip(
        F.array_repeat(F.lit(None).cast(spec.raw_schema), F.size("_slow.records")).alias("rec"),
        F.col("_slow.records").alias("txt"),
    )
    items = F.when(F.col("_fast"), fast_items).when(slow_ok, slow_items)
    return (
        staged.select(
            SOURCE_FILE,
            page_ok.alias("_page_ok"),
            F.when(~page_ok, F.col("_text")).alias("_page_text"),
            envelope("request.params").getItem("updateSince").alias(REQUEST_UPDATE_SINCE),
            envelope("context").getItem("list_id").alias("_context_list_id"),
            envelope("fetched_at").alias("_fetched_at"),
            # The server's clock when the page was fetched (else ours): bounds the cursor.
            F.coalesce(envelope("server_date"), envelope("fetched_at")).alias(SERVER_DATE_COLUMN),
            envelope("repeats").alias("_repeats"),
            envelope("request.endpoint").alias(SOURCE_COLUMN),
            envelope("page").alias("_page_number"),
            # _outer: an unreadable page still yields a row (NULL pos), to be quarantined.
            F.posexplode_outer(items).alias("_pos", "_item"),
        )
        # A valid page without records (the empty last page of a pull) yields nothing, and
        # a record the request delivered before, unchanged, is left out (a re-read anchor).
        .where(F.col("_pos").isNotNull() | ~F.col("_page_ok"))
        .where(~F.coalesce(F.array_contains("_repeats", F.col("_pos")), F.lit(False)))
    )


def _record_rows(items: DataFrame, spec: TableSpec) -> DataFrame:
    """Page items (``_page_items``) -> the raw columns of each record (parsed here only if
    it came as text), its ``_fetch_order`` and ``_raw`` text; a list change's ``id`` is the
    list id of its request."""
    text = F.col("_item.txt")
    # Only the records of the other pages are parsed here (NULL text: no parse).
    parsed = F.when(
        text.isNotNull(),
        F.from_json(
            text,
            StructType([*spec.raw_schema.fields, StructField(CORRUPT_COLUMN, StringType())]),
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN},
        ),
    )
    fields = [
        F.when(text.isNull(), F.col("_item.rec")[f.name]).otherwise(parsed[f.name]).alias(f.name)
        for f in spec.raw_schema.fields
    ]
    order = F.when(
        F.col("_page_ok"),
        F.struct(
            F.col("_fetched_at").alias("fetched_at"),
            F.col("_page_number").alias("page"),
            F.col("_pos").cast(LongType()).alias("pos"),
        ),
    )
    records = items.select(
        SOURCE_FILE,
        SOURCE_COLUMN,
        SERVER_DATE_COLUMN,
        "_page_ok",
        "_page_text",
        REQUEST_UPDATE_SINCE,
        "_context_list_id",
        order.alias(ORDER_COLUMN),
        text.alias(RAW_COLUMN),
        *fields,
        parsed[CORRUPT_COLUMN].alias(CORRUPT_COLUMN),
    )
    if "id" in records.columns:
        records = records.withColumn("id", F.coalesce(F.col("_context_list_id"), F.col("id")))
    return records


def _with_page_problems(records: DataFrame) -> DataFrame:
    """Records with ``_problem`` (an unreadable page is one) -> ``_problem``, ``_raw``
    (the page's or the record's text), ``_source_file`` and ``_source`` set only on rows
    to quarantine; the page helper columns dropped."""
    problem = F.when(~F.col("_page_ok"), F.lit(BAD_PAGE)).otherwise(F.col(PROBLEM_COLUMN))
    raw = F.when(~F.col("_page_ok"), F.col("_page_text")).when(
        F.col(PROBLEM_COLUMN).isNotNull(), F.col(RAW_COLUMN)
    )
    bad = F.col(PROBLEM_COLUMN).isNotNull()
    return (
        records.withColumn(PROBLEM_COLUMN, problem)
        .withColumn(RAW_COLUMN, raw)
        .withColumn(SOURCE_FILE, F.when(bad, F.col(SOURCE_FILE)))
        .withColumn(SOURCE_COLUMN, F.when(bad, F.col(SOURCE_COLUMN)))
        .drop("_context_list_id", "_page_ok", "_page_text")
    )


def with_shape_checks(spec: TableSpec) -> Callable[[DataFrame], DataFrame]:
    """Tell a record of a slightly wrong shape from one that is no record at all.

    Records parsed on their own (``_raw`` set) that do not fit the raw schema have
    ``_corrupt_record``. Text that is not a JSON object (a scalar, an array, cut JSON)
    keeps it: it is quarantined. An object with a part of the wrong shape
    (``"properties": []``, ``"dates": "..."``) loads, from what Spark's partial results
    parsed, with that part NULL, named in ``_unreadable`` (counted as a bad value) -
    unless no key part survived, when it is quarantined after all.
    """
    nested = [f.name for f in spec.raw_schema.fields if isinstance(f.dataType, StructType)]

    def step(df: DataFrame) -> DataFrame:
        text = F.col(RAW_COLUMN)
        is_object = F.json_object_keys(text).isNotNull()
        partial = text.isNotNull() & F.col(CORRUPT_COLUMN).isNotNull() & is_object
        unreadable = [
            F.when(F.col(name).isNull() & F.get_json_object(text, f"$.{name}").isNotNull(),
                   F.array(F.lit(name))).otherwise(F.array().cast("array<string>"))
            for name in nested
        ]  # fmt: skip
        parts = F.concat(*unreadable) if unreadable else F.array().cast("array<string>")
        loads = partial & keyable(spec)
        corrupt = F.when(text.isNotNull() & ~is_object, text).when(partial & ~loads, text)
        return df.withColumn(
            UNREADABLE_COLUMN, F.when(loads, parts).otherwise(F.array().cast("array<string>"))
        ).withColumn(CORRUPT_COLUMN, corrupt)

    return step
