"""API pages landed in S3 (boto3) and read back by Spark through s3a, end to end."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from pyspark.sql import SparkSession

from ometria_spark.config import config_from_dict
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import export_files, write_s3
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.sync import run
from tests import expected
from tests.conftest import BUCKET
from tests.reliability.rows import assert_rows
from tests.test_sync import ACCOUNT, KEY, SOURCE, assert_tables_match


def test_sync_with_the_landing_zone_in_s3(
    spark: SparkSession, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    with EmulatorServer(Dataset.generate(seed=9, profiles=250, lists=1), api_key=KEY) as server:
        config = config_from_dict(
            {
                "account_id": ACCOUNT,
                "source_id": SOURCE,
                "api": {"base_url": server.url, "key_env": "OMETRIA_TEST_KEY", "page_size": 100,
                        "requests_per_second": 200},
                "storage": {"raw_path": f"s3a://{BUCKET}/raw", "tables_path": str(tmp_path),
                            "s3_endpoint": s3_endpoint},
                "sync": {"streams": ["lists", "profiles"], "start_date": "2025-06-01"},
            }
        )  # fmt: skip
        report = run(spark, config)
        assert report.ok, report.streams
        assert_tables_match(spark, config, server.dataset, ("lists", "profiles"))

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="raw/")["Contents"]]
    profile_pages = [k for k in keys if k.startswith("raw/profiles/") and k.endswith(".json")]
    assert len([k for k in profile_pages if "/r0000-p" in k]) == 3  # 250 profiles, pages of 100
    assert any(k.endswith("/_merged") for k in keys if k.startswith("raw/profiles/"))


def test_exports_and_landing_zone_on_two_s3_endpoints(
    spark: SparkSession, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports on one S3-compatible store, the landing zone on another: each endpoint
    applies to its own buckets only (S3A per-bucket options, boto3 per storage)."""
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    # Another process: moto servers in one process share their buckets, and a wrong
    # endpoint would go unnoticed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    other = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    lake = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(lake, timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers: it is up
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=lake, region_name="us-east-1").create_bucket(Bucket="lake")
        exports = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        ds = Dataset.generate(seed=4, profiles=120, lists=1)
        write_s3(exports, BUCKET, "email_events", export_files(ds.email_events, files=1))
        with EmulatorServer(ds, api_key=KEY) as server:
            config = config_from_dict(
                {
                    "account_id": ACCOUNT,
                    "source_id": SOURCE,
                    "api": {"base_url": server.url, "key_env": "OMETRIA_TEST_KEY",
                            "page_size": 100, "requests_per_second": 200},
                    "exports": {"email_events_path": f"s3a://{BUCKET}/email_events",
                                "s3_endpoint": s3_endpoint},
                    "storage": {"raw_path": "s3a://lake/raw", "tables_path": str(tmp_path),
                                "s3_endpoint": lake},
                    "sync": {"streams": ["lists", "profiles", "email_events"],
                             "start_date": "2025-06-01"},
                }
            )  # fmt: skip
            report = run(spark, config)
            assert report.ok, [r.error for r in report.streams]
            assert_tables_match(spark, config, ds, ("lists", "profiles"))
            assert_rows(
                spark,
                config,
                "email_events",
                expected.email_events(ds.email_events, SOURCE, ACCOUNT),
            )
        pages = boto3.client("s3", endpoint_url=lake, region_name="us-east-1").list_objects_v2(
            Bucket="lake", Prefix="raw/profiles/"
        )
        assert any(o["Key"].endswith(".json") for o in pages["Contents"])
        assert "Contents" not in exports.list_objects_v2(Bucket=BUCKET, Prefix="raw/")
    finally:
        for key in [k for k in spark.conf.getAll if k.startswith("fs.s3a.bucket.")]:
            spark.conf.unset(key)
        other.terminate()
        other.wait(timeout=10)
