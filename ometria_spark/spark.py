"""The one place that builds or finds the Spark session.

- Databricks, a notebook with a session, or spark-submit: the session (or the JVM started by
  spark-submit) already exists. We reuse it and never force a master or jars: under
  spark-submit the driver's classpath is fixed before Python runs, so Delta's jars must come
  from the command line (see the README) and a missing Delta extension is reported clearly.
- Anywhere else (tests, `make demo`, `python jobs/ometria_sync.py`): a local session with
  Delta's extension and catalog and the jars from ``ometria_spark.jars``.
Every session runs with ``spark.sql.session.timeZone=UTC``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, MapType, StringType, StructField, StructType

from ometria_spark import jars, jvm_archive
from ometria_spark.config import Config, s3_buckets

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    # Landed API pages are many small files: pack more of them into one task.
    "spark.sql.files.openCostInBytes": "65536",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    # PySpark 4's DataFrame query context: each column function sends its Python call site
    # to the JVM (about ten extra round trips per call); a run builds its plans from
    # thousands of them. Off, an analysis error names no Python line, and a warm
    # incremental sync ran 17.7 -> 14.7 s (tests' data, side by side).
    "spark.python.sql.dataFrameDebugging.enabled": "false",
}


# Session settings a run needs whatever the caller's session says (restored afterwards):
# timestamps without an offset are UTC, cursors are rendered in UTC; a record with a part
# of the wrong shape keeps its other fields (see readers.with_shape_checks).
RUN_SETTINGS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.json.enablePartialResults": "true",
}


_GLOB = re.compile(r"([\\\[\]{}*?])")


def literal_path(path: str) -> str:
    """A path as Spark's file sources read exactly that file: they take a path holding
    ``[]{}*?\\`` for a glob pattern (``a[1].csv`` would read ``a1.csv``); escaped, each
    such character matches itself."""
    return _GLOB.sub(r"\\\1", path)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def launched_by_spark_submit() -> bool:
    # spark-submit starts the JVM first and tells the Python driver where its gateway is.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def s3a_options(
    endpoint: str | None, region: str = "us-east-1", bucket: str | None = None
) -> dict[str, str]:
    """Hadoop options for an S3-compatible endpoint (None: the AWS default endpoint).

    With ``bucket``, the options are S3A's per-bucket ones (``fs.s3a.bucket.B.endpoint``),
    so that one bucket on MinIO and others on AWS work side by side.
    """
    if not endpoint:
        return {}
    prefix = f"fs.s3a.bucket.{bucket}." if bucket else "fs.s3a."
    return {
        f"{prefix}endpoint": endpoint,
        f"{prefix}endpoint.region": region,
        f"{prefix}path.style.access": "true",
        f"{prefix}connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
        f"{prefix}aws.credentials.provider": (
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        ),
    }


def s3a_conf(config: Config) -> dict[str, str]:
    """The per-bucket S3A options of a config: the exports' endpoint for the exports' bucket,
    the storage endpoint for the landing zone's and the tables' buckets."""
    options: dict[str, str] = {}
    for key, path in s3_buckets(config):
        if key.startswith("exports."):
            endpoint, region = config.exports.s3_endpoint, config.exports.s3_region
        else:
            endpoint, region = config.storage.s3_endpoint, config.storage.s3_region
        bucket = path.split("://", 1)[1].split("/", 1)[0]
        options.update(s3a_options(endpoint, region, bucket))
    return options


def get_spark(
    app_name: str = "ometria-sync",
    *,
    extra_conf: Mapping[str, str] | None = None,
    hadoop_conf: Mapping[str, str] | None = None,
    s3a: bool = True,
) -> SparkSession:
    """Return the active session, the spark-submit/Databricks one, or a new local one.

    ``extra_conf`` only applies to a new local session (static settings such as memory);
    ``hadoop_conf`` (e.g. ``s3a_options``) is applied to any session as runtime SQL conf,
    which Spark copies into the Hadoop configuration of every file read and write.
    ``s3a=False`` leaves hadoop-aws and the AWS SDK off a new local session (faster start).
    """
    spark = SparkSession.getActiveSession()
    if spark is None:
        if on_databricks() or launched_by_spark_submit():
            spark = SparkSession.builder.appName(app_name).getOrCreate()
            if launched_by_spark_submit() and not on_databricks():
                spark.sparkContext.setLogLevel(os.environ.get("OMETRIA_SPARK_LOG_LEVEL", "WARN"))
        else:
            spark = _local_session(app_name, extra_conf or {}, hadoop_conf or {}, s3a)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    for key, value in (hadoop_conf or {}).items():
        spark.conf.set(key, value)
    require_delta(spark)
    return spark


def _local_session(
    app_name: str, extra_conf: Mapping[str, str], hadoop_conf: Mapping[str, str], s3a: bool
) -> SparkSession:
    jars.check_spark_version()
    missing = jars.missing_jars()
    if missing:
        raise RuntimeError(
            "Delta/hadoop-aws jars are missing from the local Maven repository "
            f"({', '.join(str(p) for p in missing)}): run `make setup`"
        )
    builder = SparkSession.builder.appName(app_name).master(
        os.environ.get("OMETRIA_SPARK_MASTER", "local[*]")
    )
    conf = {**LOCAL_DEFAULTS, **{f"spark.hadoop.{k}": v for k, v in hadoop_conf.items()}}
    conf["spark.jars"] = ",".join(str(p) for p in jars.jar_paths(s3a=s3a))
    conf.update(extra_conf)
    # The class archive (``ometria_spark.jvm_archive``), before the caller's own options.
    java_options = [*jvm_archive.java_options(), conf.get("spark.driver.extraJavaOptions", "")]
    if any(java_options):
        conf["spark.driver.extraJavaOptions"] = " ".join(o for o in java_options if o)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("OMETRIA_SPARK_LOG_LEVEL", "ERROR"))
    return spark


def require_delta(spark: SparkSession) -> None:
    """Fail with the fix when a reused session was started without Delta."""
    if on_databricks():
        return  # Delta is built into the Databricks runtime.
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_EXTENSION not in extensions:
        raise RuntimeError(
            "this Spark session has no Delta Lake extension; start it with "
            '--jars "$(python -m ometria_spark.jars)" '
            f"--conf spark.sql.extensions={DELTA_EXTENSION} "
            f"--conf spark.sql.catalog.spark_catalog={DELTA_CATALOG} (see README: spark-submit)"
        )


@contextmanager
def run_settings(spark: SparkSession) -> Iterator[None]:
    """The session as a run needs it (``RUN_SETTINGS``), put back as it was afterwards: a
    notebook's session in Asia/Kolkata gives the same tables and cursors as one in UTC."""
    previous: dict[str, str | None] = {}
    value: str | None
    for key, value in RUN_SETTINGS.items():
        try:
            previous[key] = spark.conf.get(key)
            spark.conf.set(key, value)
        except Exception as exc:  # a platform that does not allow this one (serverless)
            log.debug("cannot set %s: %s", key, exc)
    try:
        yield
    finally:
        for key, value in previous.items():
            try:
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
            except Exception as exc:
                log.debug("cannot restore %s: %s", key, exc)


# --- rows of the driver's ----------------------------------------------------------------

# Up to this many rows, ``local_frame`` writes them into the plan as literals.
LITERAL_ROWS = 200


def local_frame(
    spark: SparkSession, rows: Iterable[Sequence[Any]], schema: StructType
) -> DataFrame:
    """The driver's rows (a run's records, cursors, a batch's files) as a DataFrame.

    Up to ``LITERAL_ROWS`` rows become literals in the plan. Classic PySpark's
    ``createDataFrame`` pickles local rows into an RDD that Python worker processes
    unpickle: the first such job of a JVM starts the worker daemon (measured on a cold job
    JVM: 0.97 s against 0.36 s for literals, 2 CPU-seconds more), and each later one costs
    a round through a worker. Spark Connect takes both alike. More rows go through
    ``createDataFrame`` (a plan of thousands of literals would cost more to analyse)."""
    rows = list(rows)
    if len(rows) > LITERAL_ROWS:
        return spark.createDataFrame(rows, schema)
    fields = schema.fields
    if not rows:
        return spark.range(0).select(*[F.lit(None).cast(f.dataType).alias(f.name) for f in fields])
    structs = [
        F.struct(*[_literal(v, f.dataType).alias(f.name) for v, f in zip(row, fields, strict=True)])
        for row in rows
    ]
    return spark.range(1).select(F.inline(F.array(*structs)))


def string_schema(*names: str) -> StructType:
    """A schema of string columns (``local_frame``'s rows of text)."""
    return StructType([StructField(name, StringType()) for name in names])


def _literal(value: Any, data_type: DataType) -> Column:
    if value is not None and isinstance(data_type, MapType):
        pairs = [F.lit(part) for item in value.items() for part in item]
        return F.create_map(*pairs).cast(data_type)
    return F.lit(value).cast(data_type)


# --- through the JVM (a classic session only; see the README on Spark Connect) ---------------


def jvm(spark: SparkSession) -> Any:
    gateway = spark._jvm
    if gateway is None:
        raise RuntimeError("the Spark session has no JVM gateway (Spark Connect is not supported)")
    return gateway


def hadoop_conf(spark: SparkSession) -> Any:
    """The Hadoop configuration Spark's own reads use: runtime SQL confs
    (``spark.conf.set("fs.s3a.endpoint", ...)``) are not in ``_jsc.hadoopConfiguration()``;
    ``newHadoopConf()`` merges them in."""
    return spark._jsparkSession.sessionState().newHadoopConf()


def hadoop_path(spark: SparkSession, path: str) -> Any:
    return jvm(spark).org.apache.hadoop.fs.Path(path)


def release(checkpointed: DataFrame) -> None:
    """Free a local checkpoint's blocks now rather than when the JVM collects them."""
    try:
        checkpointed._jdf.queryExecution().analyzed().rdd().unpersist(False)
    except Exception:  # a plan of another shape: Spark's cleaner frees it later anyway
        log.debug("could not unpersist a local checkpoint", exc_info=True)
