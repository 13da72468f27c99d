"""One Spark + Delta session for the whole test run; every table goes to tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ometria_spark.readers import RAW_COLUMN, parse_records
from ometria_spark.spark import get_spark
from ometria_spark.tables import TableSpec
from ometria_spark.transforms import ORDER_COLUMN


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = get_spark(
        "ometria-spark-tests",
        extra_conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
            "spark.sql.warehouse.dir": "/tmp/ometria-spark-tests-warehouse",
            "spark.databricks.delta.snapshotPartitions": "1",
            # Tests are many short jobs: C1-only JIT warms up faster than C2 pays back.
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        },
    )
    yield session
    session.stop()


def raw_records(spark: SparkSession, spec: TableSpec, records: list[Any]) -> DataFrame:
    """Records as the source gives them (dicts, or JSON text as-is) -> parsed raw rows.

    The list position is the fetch order: a later record counts as fetched later.
    """
    texts = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    df = spark.createDataFrame(
        [(t, i) for i, t in enumerate(texts)], f"{RAW_COLUMN} string, pos long"
    ).select(RAW_COLUMN, F.struct(F.col("pos")).alias(ORDER_COLUMN))
    return parse_records(df, spec)
