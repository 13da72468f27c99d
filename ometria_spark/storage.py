"""Where the landing zone and the lock live: small text files on a local path, ``file:``,
``dbfs:/`` (through the ``/dbfs`` mount on Databricks) or ``s3://``/``s3a://`` (boto3).

A file is written whole or not at all (local: write then rename; S3: one PUT), and
``create_exclusive`` is the one atomic step the lock is built on.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class Storage(Protocol):
    def write_text(self, path: str, text: str) -> None: ...
    def read_text(self, path: str) -> str: ...
    def create_exclusive(self, path: str, text: str) -> bool: ...
    def delete(self, path: str) -> None: ...
    def list_names(self, folder: str, stop_at: str | None = None) -> list[str]: ...
    def list_tree(self, folder: str) -> list[str]: ...
    def remove_tree(self, folder: str) -> bool: ...
    def spark_path(self, path: str) -> str: ...


class LocalStorage:
    """A local folder (or the /dbfs mount)."""

    def __init__(self, spark_prefix: str = "") -> None:
        # dbfs:/x is /dbfs/x to Python and dbfs:/x to Spark.
        self._spark_prefix = spark_prefix

    def write_text(self, path: str, text: str) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)

    def read_text(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create ``path`` with ``text`` unless it exists (atomic: ``O_EXCL``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return True

    def delete(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def list_names(self, folder: str, stop_at: str | None = None) -> list[str]:
        """The names in ``folder``, sorted; with ``stop_at``, only those before it."""
        base = Path(folder)
        if not base.is_dir():
            return []
        names = sorted(p.name for p in base.iterdir() if not p.name.startswith(".tmp-"))
        return names if stop_at is None else [n for n in names if n < stop_at]

    def list_tree(self, folder: str) -> list[str]:
        """Every file below ``folder``, as paths relative to it."""
        base = Path(folder)
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def remove_tree(self, folder: str) -> bool:
        """Delete ``folder`` and all below it; False if there was none."""
        if not Path(folder).exists():
            return False
        shutil.rmtree(folder)
        return True

    def spark_path(self, path: str) -> str:
        if self._spark_prefix:
            return self._spark_prefix + path.removeprefix("/dbfs")
        return "file://" + str(Path(path).resolve())


class S3Storage:
    """An S3 (or S3-compatible) prefix, through boto3."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        import boto3

        self._client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parsed = urlparse(path)
        return parsed.netloc, parsed.path.lstrip("/")

    def write_text(self, path: str, text: str) -> None:
        bucket, key = self._split(path)
        self._client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))

    def read_text(self, path: str) -> str:
        """The object's text; ``FileNotFoundError`` when there is none (as locally)."""
        bucket, key = self._split(path)
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self._client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(path) from exc
        return str(body.decode("utf-8"))

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create ``path`` unless it exists (an S3 conditional write, ``If-None-Match: *``)."""
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            self._client.put_object(
                Bucket=bucket, Key=key, Body=text.encode("utf-8"), IfNoneMatch="*"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def delete(self, path: str) -> None:
        bucket, key = self._split(path)
        self._client.delete_object(Bucket=bucket, Key=key)

    def list_names(self, folder: str, stop_at: str | None = None) -> list[str]:
        """The names in ``folder``, sorted; with ``stop_at``, only those before it, and no
        page of the listing is requested past it (S3 lists in key order)."""
        bucket, key = self._split(folder.rstrip("/") + "/")
        names: set[str] = set()
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
            names.update(o["Key"][len(key) :] for o in page.get("Contents", []))
            names.update(
                p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", [])
            )
            if stop_at is not None and any(n >= stop_at for n in names):
                break
        ordered = sorted(names)
        return ordered if stop_at is None else [n for n in ordered if n < stop_at]

    def list_tree(self, folder: str) -> list[str]:
        bucket, key = self._split(folder.rstrip("/") + "/")
        paginator = self._client.get_paginator("list_objects_v2")
        return sorted(
            o["Key"][len(key) :]
            for page in paginator.paginate(Bucket=bucket, Prefix=key)
            for o in page.get("Contents", [])
        )

    def remove_tree(self, folder: str) -> bool:
        bucket, key = self._split(folder.rstrip("/") + "/")
        names = self.list_tree(folder)
        for start in range(0, len(names), 1000):  # one request per 1,000 objects
            objects = [{"Key": key + name} for name in names[start : start + 1000]]
            self._client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        return bool(names)

    def spark_path(self, path: str) -> str:
        return "s3a://" + path.split("://", 1)[1]


def storage_for(root: str, s3_endpoint: str | None = None, region: str | None = None) -> Storage:
    """The storage behind a ``storage.raw_path`` value."""
    if root.startswith(("s3://", "s3a://")):
        return _s3_storage(s3_endpoint, region)
    if root.startswith("dbfs:/"):
        return LocalStorage(spark_prefix="dbfs:")
    return LocalStorage()


@functools.lru_cache(maxsize=8)
def _s3_storage(endpoint: str | None, region: str | None) -> S3Storage:
    # One boto3 client per endpoint for the process (clients are thread-safe, and slow to make).
    return S3Storage(endpoint, region)


def local_root(root: str) -> str:
    """``dbfs:/x`` -> ``/dbfs/x``; ``file:///x`` -> ``/x``; others unchanged."""
    if root.startswith("dbfs:/"):
        return "/dbfs/" + root.removeprefix("dbfs:/").lstrip("/")
    if root.startswith("file:"):
        return urlparse(root).path
    return root
