"""Export files as listed and opened through Hadoop's FileSystem (file:, s3a:, dbfs:
alike): discovery under one root, and the first (header) line of a file."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from pyspark.sql import SparkSession

from ometria_spark.errors import root_cause
from ometria_spark.spark import hadoop_conf, hadoop_path, jvm


@dataclass(frozen=True, order=True)
class ExportFile:
    """One export file as listed: its path, size in bytes and modification time (ms)."""

    path: str
    size: int
    modified_ms: int


def _is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def discover(spark: SparkSession, root: str) -> list[ExportFile]:
    """Every data file under ``root`` (recursively), ordered by modification time and path.

    Names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``, ``_temporary/``) are
    skipped, in the file name or in any folder below ``root``. A missing root raises
    ``FileNotFoundError``.
    """
    conf = hadoop_conf(spark)
    root_path = hadoop_path(spark, root)
    fs = root_path.getFileSystem(conf)
    if not fs.exists(root_path):
        raise FileNotFoundError(f"email-event export root does not exist: {root}")
    root_text = fs.makeQualified(root_path).toString().rstrip("/")
    found: list[ExportFile] = []
    listing = fs.listFiles(root_path, True)
    while listing.hasNext():
        status = listing.next()
        path = status.getPath().toString()
        relative = path[len(root_text) + 1 :] if path.startswith(root_text + "/") else ""
        parts = relative.split("/") if relative else [path.rsplit("/", 1)[-1]]
        if any(_is_hidden(part) for part in parts):
            continue
        found.append(ExportFile(path, int(status.getLen()), int(status.getModificationTime())))
    return sorted(found, key=lambda f: (f.modified_ms, f.path))


def read_first_line(spark: SparkSession, path: str) -> str | None:
    """The first line of a file (gunzipped when its name says so); None if it is empty.

    Only the first line is read, so this costs one small read per file even for big files.
    """
    gateway = jvm(spark)
    conf = hadoop_conf(spark)
    hpath = hadoop_path(spark, path)
    stream = hpath.getFileSystem(conf).open(hpath)
    try:
        codec = gateway.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
        if codec is not None:
            stream = codec.createInputStream(stream)
        reader = gateway.java.io.BufferedReader(gateway.java.io.InputStreamReader(stream, "UTF-8"))
        line = reader.readLine()
    finally:
        stream.close()
    return None if line is None else str(line)


def first_line_or_error(spark: SparkSession, path: str) -> tuple[str | None, str | None]:
    try:
        return read_first_line(spark, path), None
    except Exception as exc:  # any I/O or codec error concerns this file only
        return None, root_cause(exc)


def parse_header(line: str) -> list[str]:
    """A CSV header line -> column names (RFC 4180 quoting; a UTF-8 BOM is dropped)."""
    row = next(csv.reader([line.removeprefix("\ufeff")]), [])
    return [name.strip() for name in row]
