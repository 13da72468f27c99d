"""API faults against a synced warehouse. In each case one stream meets a fault that
outlasts the retries (a 429 storm, a 5xx storm, dropped connections, a server ignoring
offset) while the other streams meet shorter bursts of the other faults (429s with and
without Retry-After, 5xx, drops, answers slower than the timeout, truncated JSON): the
run fails that stream alone, with a one-line reason in its run record; the others sync
exactly; the failed stream's table and cursor stay as they were. The next case's run
completes the stream the last one failed, exactly, through its own shorter bursts (each
case fails another stream), and a last run without faults completes every stream.

One warehouse for the module, synced once; each case first moves the emulated account on
one day, so every stream has new rows that a fault could lose. Pages of 5 records make the
incremental pulls span several pages; 3 attempts per request and a 1.5 s timeout keep
the failing cases to seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ometria_spark.config import Config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.server import EmulatorServer
from ometria_spark.sync import RunReport, run
from tests import expected
from tests.reliability.leaks import assert_no_secret, assert_no_secret_in_files
from tests.reliability.rows import assert_rows, cursors
from tests.test_sync import ACCOUNT, API_STREAMS, KEY, SOURCE, assert_tables_match, make_config

ATTEMPTS = 3
LIST_CHANGES = "/lists/3001/changes"  # the first list's changes (ids are 3001 + 17 i)


def errors(report: RunReport) -> dict[str, str | None]:
    return {r.stream: r.error for r in report.streams if r.status != "succeeded"}


@dataclass(frozen=True)
class Case:
    name: str
    faults: tuple[tuple[str, int, str], ...] = ()  # (fault, count, path)
    ignore_offset: bool = False
    streams: tuple[str, ...] = API_STREAMS
    fails: str = ""  # the stream the fault must fail
    reason: str = ""  # in that stream's error


# Each case fails one stream with a fault that outlasts the retries, while shorter bursts
# of the other faults hit the other streams, which must still sync exactly.
A = ATTEMPTS
CASES = [
    Case("429-storm",
         (("429", A, "/profiles"), ("503", A - 1, "/unsubscribes"), ("drop", A - 1, "/lists"),
          ("truncated", A - 1, LIST_CHANGES)),
         fails="profiles", reason=f"/profiles failed after {A} attempts; last status 429"),
    Case("5xx-storm",
         (("500", A, "/unsubscribes"), ("429-retry-after", A - 1, "/profiles"),
          ("slow", A - 1, LIST_CHANGES), ("truncated", 1, "/lists")),
         fails="unsubscribes", reason=f"/unsubscribes failed after {A} attempts; last status 500"),
    Case("drop-storm",
         (("drop", A, LIST_CHANGES), ("slow", A - 1, "/profiles"),
          ("truncated", A - 1, "/unsubscribes"), ("429", A - 1, "/lists")),
         fails="member_lists", reason=f"after {A} attempts; last status None (connection error"),
    # A server that ignores offset answers page 2 with page 1 again: stopping there
    # "cleanly" would merge a part of the pull and move the cursor past the rest.
    Case("ignores-offset", ignore_offset=True, streams=("lists", "profiles", "unsubscribes"),
         fails="profiles", reason="/profiles ignores offset: the page at offset 4 repeats"),
]  # fmt: skip


@pytest.mark.slow  # one test, so that the first sync it starts from is made once
def test_fault_storms_fail_only_their_stream_and_reruns_complete(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emulated account and a warehouse holding its first full sync; then, case after
    case (a day later each), a storm that fails one stream; then a rerun without faults."""
    dataset = Dataset.generate(seed=21, profiles=300, lists=2)
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY)
    with EmulatorServer(dataset, api_key=KEY) as server:
        server.slow_seconds = 3.0
        config = make_config(
            tmp_path, server, page_size=5, max_attempts=ATTEMPTS, timeout_seconds=1.5
        )
        first = run(spark, config)
        assert first.ok, errors(first)
        assert_tables_match(spark, config, dataset)
        # Each case fails another stream than the last one, so its run (which syncs that
        # one exactly, through shorter bursts) is also the last one's rerun.
        assert all(a.fails != b.fails for a, b in pairwise(CASES))
        for case in CASES:
            try:
                storm(spark, server, config, case)
            except AssertionError as exc:
                raise AssertionError(f"case {case.name}: {exc}") from exc

        # Without faults, the next run completes every stream, exactly.
        rerun = run(spark, config)
        assert rerun.ok, errors(rerun)
        assert_tables_match(spark, config, server.dataset)
        assert_no_secret_in_files(tmp_path)


def storm(spark: SparkSession, server: EmulatorServer, config: Config, case: Case) -> None:
    ds = server.dataset
    before = {name: build(ds, SOURCE, ACCOUNT) for name, build in expected.BUILDERS.items()}
    committed = cursors(spark, config)
    ds.advance_day()
    for fault, count, path in case.faults:
        server.inject(fault, count, path)
    server.ignore_offset = case.ignore_offset
    server.reset_log()
    try:
        report = run(spark, config, streams=case.streams)
    finally:
        server.ignore_offset = False
    assert not server._faults, "every injected fault was served"
    assert_no_secret(*(r.error for r in report.streams))

    statuses = {r.stream: r.status for r in report.streams}
    assert statuses == {s: "failed" if s == case.fails else "succeeded" for s in case.streams}
    (error,) = errors(report).values()
    assert error is not None and case.reason in error and "\n" not in error, error
    # The other streams synced exactly, through their shorter fault bursts.
    assert_tables_match(spark, config, ds, tuple(s for s in case.streams if s != case.fails))
    # Nothing of the failed pull was merged, and its cursor did not move.
    assert cursors(spark, config).get(case.fails) == committed.get(case.fails)
    assert_rows(spark, config, case.fails, before[case.fails])


def test_a_key_with_a_trailing_newline_works_and_never_shows(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Secret stores and env files often keep a key's final newline; requests refuses
    such a header with an error that quotes the value, key included."""
    monkeypatch.setenv("OMETRIA_TEST_KEY", KEY + "\n")
    dataset = Dataset.generate(seed=2, profiles=20, lists=2)
    with EmulatorServer(dataset, api_key=KEY) as server:
        config = make_config(tmp_path, server)
        report = run(spark, config, streams=("lists",))
    assert_no_secret(caplog.text, *(r.error for r in report.streams))
    assert report.ok, errors(report)
    assert_tables_match(spark, config, dataset, ("lists",))
