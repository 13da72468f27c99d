"""Where an API key could leak, and the checks that it did not.

The test keys all start with ``test-key-`` (``tests.test_sync.KEY`` among them), so any
occurrence of that prefix in a file, a log or an output is a leak, whichever key a test
used. Files are read as the bytes on disk and, where those bytes are compressed, as their
content too: Parquet (data files and Delta checkpoints, through pyarrow) and gzip.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from tests.test_sync import KEY

PREFIX = b"test-key-"
SECRETS: tuple[bytes, ...] = (KEY.encode("utf-8"), PREFIX)


def _leaks(data: bytes, extra: Iterable[str]) -> bool:
    return any(s in data for s in (*SECRETS, *(e.encode("utf-8") for e in extra)))


def _decoded(path: Path, data: bytes) -> bytes:
    """The content behind a compressed file's bytes (empty when there is none to read)."""
    if path.suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception:  # not a whole Parquet file (being written, or a test's bad file)
            return b""
        return json.dumps(rows, default=str, ensure_ascii=False).encode("utf-8")
    if path.suffix == ".gz":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error):  # a truncated or corrupt .gz (bad-input tests)
            return b""
    return b""


def files_with_secret(root: Path, extra: Iterable[str] = ()) -> list[str]:
    """Files under ``root`` holding a test key, in their bytes or their decoded content."""
    extra = tuple(extra)
    found = []
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:  # removed meanwhile
            continue
        if _leaks(data, extra) or _leaks(_decoded(path, data), extra):
            found.append(str(path.relative_to(root)))
    return found


def assert_no_secret_in_files(root: Path, extra: Iterable[str] = ()) -> None:
    found = files_with_secret(root, extra)
    assert not found, f"the API key was written to {found}"


def assert_no_secret(*texts: str | bytes | None, extra: Iterable[str] = ()) -> None:
    """No test key in any of ``texts`` (a subprocess's stdout and stderr, an error...)."""
    extra = tuple(extra)
    for text in texts:
        if text is None:
            continue
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        # Never print the text itself: it would repeat the leak into pytest's report.
        assert not _leaks(data, extra), "the API key appears in an output or a message"
