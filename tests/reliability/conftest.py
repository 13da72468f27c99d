"""Every reliability test doubles as a secrets test: after it, the API key must be in no
file under its ``tmp_path`` (landed pages, plans, lock tickets, Delta tables and logs,
export files), in no log record (the package logs at DEBUG here, tracebacks included) and
in nothing written to stdout or stderr. Subprocess outputs are checked by the tests that
start them (``tests.reliability.leaks.assert_no_secret``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.leaks import assert_no_secret, assert_no_secret_in_files


@pytest.fixture(autouse=True)
def no_secret_leaks(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    # capfd and capsys cannot be used together: a test that asked for capsys keeps it.
    capfd: pytest.CaptureFixture[str] | None = (
        None if "capsys" in request.fixturenames else request.getfixturevalue("capfd")
    )
    caplog.set_level(logging.DEBUG, logger="ometria_spark")
    yield
    assert_no_secret_in_files(tmp_path)
    assert_no_secret(caplog.text, *(r.getMessage() for r in caplog.records))
    if capfd is not None:
        out, err = capfd.readouterr()
        # Hand the output back, so that pytest still shows it for a failed test.
        sys.stdout.write(out)
        sys.stderr.write(err)
        assert_no_secret(out, err)
