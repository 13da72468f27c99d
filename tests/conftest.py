"""One Spark + Delta session for the whole test run; every table goes to tmp_path."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.readers import RAW_COLUMN, parse_records
from ometria_spark.spark import get_spark, s3a_options
from ometria_spark.tables import TableSpec
from ometria_spark.transforms import ORDER_COLUMN

# The tests' data is tiny: Spark's code generation (Janino compiling each new plan's Java)
# costs more than it saves there (a fifth of the test JVM's CPU samples under JFR). The
# test sessions and the tests' job processes evaluate interpreted; the results are the same
# by Spark's contract. The ``product_codegen`` fixture puts Spark's defaults back for the
# end-to-end tests that keep generated code covered (tests/test_sync.py, tests/test_exports.py).
INTERPRETED = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = get_spark(
        "ometria-spark-tests",
        extra_conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
            # One per pytest-xdist worker: sessions in parallel must not share a warehouse.
            "spark.sql.warehouse.dir": "/tmp/ometria-spark-tests-warehouse-"
            + os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "spark.databricks.delta.snapshotPartitions": "1",
            # This JVM lives for the whole run: C2 pays back (a subset of the in-process
            # tests took 142-201 s against 191-202 s C1-only, side by side); the serial
            # collector leaves the other worker's core alone.
            "spark.driver.extraJavaOptions": "-XX:+UseSerialGC",
            **INTERPRETED,
        },
    )
    yield session
    session.stop()


@pytest.fixture
def product_codegen(spark: SparkSession) -> Iterator[None]:
    """Spark's own defaults (whole-stage and expression code generation) for one test."""
    for key in INTERPRETED:
        spark.conf.unset(key)
    assert spark.conf.get("spark.sql.codegen.wholeStage") == "true"
    try:
        yield
    finally:
        for key, value in INTERPRETED.items():
            spark.conf.set(key, value)


def raw_records(spark: SparkSession, spec: TableSpec, records: list[Any]) -> DataFrame:
    """Records as the source gives them (dicts, or JSON text as-is) -> parsed raw rows.

    The list position is the fetch order: a later record counts as fetched later.
    """
    texts = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    df = spark.createDataFrame(
        [(t, i) for i, t in enumerate(texts)], f"{RAW_COLUMN} string, pos long"
    ).select(RAW_COLUMN, F.struct(F.col("pos")).alias(ORDER_COLUMN))
    return parse_records(df, spec)


BUCKET = "ometria-exports"
PREFIX = "email_events"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# The JVM's environment was fixed when Spark started, so its AWS SDK gets the test
# credentials through the system properties that its default provider chain reads first.
JVM_PROPERTIES = {"aws.accessKeyId": "testing", "aws.secretAccessKey": "testing"}


@pytest.fixture
def s3_endpoint(spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server with an empty bucket, and Spark pointed at it (undone afterwards)."""
    for key, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Moto servers in one process share their state: start from none, so no test sees the
    # buckets and objects of an earlier one.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)

    # No cached S3A FileSystem may outlive this server (its endpoint would be stale).
    confs = {**s3a_options(endpoint), "fs.s3a.impl.disable.cache": "true"}
    system = spark._jvm.java.lang.System  # type: ignore[union-attr]
    previous = {key: system.getProperty(key) for key in JVM_PROPERTIES}
    for key, value in JVM_PROPERTIES.items():
        system.setProperty(key, value)
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        yield endpoint
    finally:
        for key in confs:
            spark.conf.unset(key)
        for key, value in previous.items():
            if value is None:
                system.clearProperty(key)
            else:
                system.setProperty(key, value)
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests first (in their order, then the rest in theirs): with
    pytest-xdist handing out one test at a time, the long ones start while the short ones
    fill the other worker, so no long test starts last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
