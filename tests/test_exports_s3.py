"""The same export files, read through s3a from a local S3 server (moto), load the same rows.

The server runs inside the test process on 127.0.0.1; Spark reaches it through the s3a
options set as runtime confs, which are all unset again afterwards.
"""

from __future__ import annotations

from pathlib import Path

import boto3
from pyspark.sql import SparkSession

from ometria_spark.exports import EmailEventsResult, discover
from tests.conftest import BUCKET, PREFIX
from tests.test_exports import (
    SYNCED_1,
    Target,
    assert_same,
    events,
    export_files,
    rows_after_a_and_b,
    write,
)


def test_s3a_load_equals_local_load(spark: SparkSession, s3_endpoint: str, tmp_path: Path) -> None:
    files = export_files("csv")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    # Uploaded in order: file B is the later one (ties in S3's time break by path, same way).
    for name, data in files:
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}", Body=data)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/_SUCCESS", Body=b"")
    local_root = tmp_path / "exports"
    for order, (name, data) in enumerate(files):
        write(local_root, name, data, order)
    root = f"s3a://{BUCKET}/{PREFIX}/"

    assert [(f.path, f.size) for f in discover(spark, root)] == [
        (f"s3a://{BUCKET}/{PREFIX}/{name}", len(data)) for name, data in files
    ]
    from_s3 = Target(spark, tmp_path / "s3_tables")
    from_local = Target(spark, tmp_path / "local_tables")
    s3_result = from_s3.load(root, synced_at=SYNCED_1)
    local_result = from_local.load(str(local_root), synced_at=SYNCED_1)

    assert s3_result == local_result == EmailEventsResult(
        files_seen=2, files_loaded=2, files_rejected=[], rows_read=6, inserted=5, updated=0,
        quarantined=0, bad_values=1, files_new=2, collapsed=1,
    )  # fmt: skip
    assert_same(from_s3.rows(), from_local.rows())
    assert_same(from_s3.rows(), events(spark, rows_after_a_and_b(SYNCED_1)))
    # Nothing new in the bucket: nothing read.
    again = from_s3.load(root, synced_at=SYNCED_1)
    assert again == EmailEventsResult(files_seen=2, files_loaded=0, files_new=0)
    # From a start folder, the listing skips older folders and finds a newer one's file.
    start = f"s3a://{BUCKET}/{PREFIX}/2026/01/02"
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/2026/01/03/c.csv", Body=files[1][1])
    assert [
        f.path.removeprefix(f"s3a://{BUCKET}/{PREFIX}/") for f in discover(spark, root, start)
    ] == [
        files[1][0],
        "2026/01/03/c.csv",
    ]
