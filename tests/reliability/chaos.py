"""The chaos campaign (`make chaos`, not part of `make test`): randomised kills and API faults
against the real job, with every table checked against the expected rows.

``.venv/bin/python -m tests.reliability.chaos --runs 50 --seed N``

One emulator (in this process, on loopback) serves a small account; email-event export files
are written to a local folder. Each run is ``jobs/ometria_sync.py`` in its own process group,
with one randomly chosen (seeded, printed) disturbance:

- ``kill``: SIGKILL to the whole process group (the JVM too) after a random delay, uniform
  over a typical run's duration;
- ``crash``: a kill at a named phase (``OMETRIA_SPARK_CRASH_AT``), picked among those
  ``ometria_spark.phases`` declares;
- ``fault``: a burst of API faults (429 storms longer than the retries, 5xx bursts, dropped
  connections, slow answers past the timeout, truncated bodies) on one endpoint or any;
- ``live``: the account changes while the run pulls it (``LiveChanges``: each request moves
  its clock on, updates and deletes profiles on the pages fetched already, adds list
  changes and unsubscribes), half the time with a SIGKILL at a random moment too;
- ``none``.

Every few runs the account moves on a day and new export files appear. After every run that
exits 0 (and after a final clean run), every table is compared with the rows built in plain
Python by ``tests/expected.py``: a row is lost when its key is missing or the row differs,
duplicated when its key is there more than once. A run that fails a stream (exit 1) is
checked on the streams it reports succeeded. A run during which the account changed is
checked for duplicates and unexpected rows only (a change made while it ran may be the next
run's to fetch); the next run that completes without live changes must be exact. Profiles
deleted in the account may be in the table (as they were last loaded) or not. The figures
are printed and appended to ``tests/reliability/chaos-results.md``; the exit status is 1 on
any loss, duplicate, unexpected row, leaked key or unexplained outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from ometria_spark.config import Config, load_config
from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import export_files, write_local
from ometria_spark.emulator.server import EmulatorServer, LiveChanges
from ometria_spark.phases import PHASES
from ometria_spark.spark import get_spark
from ometria_spark.tables import KEY_COLUMN, SYNCED_AT, TABLES
from tests import expected
from tests.conftest import INTERPRETED
from tests.frames import typed_rows
from tests.test_job import FAST_JVM, JVM_FLAGS, ROOT
from tests.test_sync import ACCOUNT, SOURCE

# The same date/commit/machine stamp as the benchmarks' results (bench/ is not a package).
sys.path.insert(0, str(ROOT / "bench"))
from record import append

STREAMS = ("lists", "profiles", "member_lists", "unsubscribes", "email_events")
API_STREAMS = STREAMS[:4]
KEY = "test-key-chaos-3b9d2e71"
KEY_ENV = "OMETRIA_CHAOS_KEY"
MAX_ATTEMPTS = 4
TIMEOUT_SECONDS = 2.0  # below the emulator's 3 s "slow" answers: those time out and retry
RUN_TIMEOUT = 300.0
DEFAULT_TYPICAL = 15.0  # seconds, until a run has completed and been timed
RESULTS = Path(__file__).resolve().parent / "chaos-results.md"
# Each block of runs holds these disturbances in a shuffled order, so that any few
# consecutive runs mix them.
BLOCK = ("kill", "kill", "crash", "crash", "fault", "fault", "live", "live", "none")
FAULT_KINDS = ("429-storm", "429-burst", "5xx-burst", "drop", "slow", "truncated")
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


# --- the disturbances -------------------------------------------------------------------


@dataclass(frozen=True)
class CrashTemplate:
    """A phase's name as declared (``merged:{stream}``) and the streams it can name."""

    template: str
    streams: tuple[str, ...]
    later: bool  # a *during* phase: the kill comes OMETRIA_SPARK_CRASH_DELAY s after it

    def name(self, stream: str) -> str:
        return _PLACEHOLDER.sub(stream, self.template)


def crash_templates() -> list[CrashTemplate]:
    """Every phase the package declares (``ometria_spark.phases``) that names a stream or
    none (``creating:{table}`` names a table and is left to the crash chain). A kill at
    ``extracting:`` waits for the second page landed (``#2``), so that a pull is half
    landed."""
    scopes = {"api": API_STREAMS, "any": STREAMS, "": ("",)}
    found = []
    for declared in PHASES:
        if declared.scope not in scopes:
            continue
        template = declared.template
        if template.startswith("extracting:"):
            template += "#2"
        found.append(CrashTemplate(template, scopes[declared.scope], declared.during))
    return found


def phase(crash_at: str) -> str:
    """A crash point's name without its stream: ``merged:profiles`` -> ``merged:``."""
    head, sep, tail = crash_at.partition("#")[0].rpartition(":")
    return head + sep if sep and tail in STREAMS else crash_at


@dataclass
class Action:
    """What one run suffers."""

    kind: str  # kill | crash | fault | live | none
    tz: str
    kill_fraction: float = 0.0
    crash_at: str | None = None
    crash_delay: float | None = None
    fault_kind: str = ""
    fault: str = ""
    count: int = 0
    path: str | None = None
    live: LiveChanges | None = None

    def describe(self, typical: float) -> str:
        if self.kind == "kill":
            return f"SIGKILL after {self.kill_fraction * typical:.1f}s (of ~{typical:.0f}s)"
        if self.kind == "live" and self.live is not None:
            kill = (f", SIGKILL after {self.kill_fraction * typical:.1f}s"
                    if self.kill_fraction else "")  # fmt: skip
            return (f"live: +{self.live.seconds_per_request:.0f}s, {self.live.updates} updates, "
                    f"{self.live.deletes} deletes per request{kill}")  # fmt: skip
        if self.kind == "crash":
            delay = f" + {self.crash_delay:.2f}s" if self.crash_delay is not None else ""
            return f"crash at {self.crash_at}{delay}"
        if self.kind == "fault":
            return f"{self.fault_kind}: {self.fault} x{self.count} on {self.path or 'any request'}"
        return "no fault"


def choose(kind: str, rng: random.Random, templates: list[CrashTemplate], ds: Dataset) -> Action:
    """The details of a ``kind`` of disturbance (every draw from ``rng`` is the same
    whatever earlier runs did, so a seed replays the same campaign)."""
    action = Action(kind, tz=rng.choice(("UTC", "America/Los_Angeles")))
    if kind == "kill":
        action.kill_fraction = rng.uniform(0.05, 0.95)
    elif kind == "live":
        action.live = LiveChanges(
            seconds_per_request=rng.choice((5.0, 60.0, 600.0)),
            updates=rng.randint(0, 2),
            deletes=rng.choice((0, 0, 1)),
            unsubscribes=rng.randint(0, 1),
            list_changes=rng.randint(0, 1),
        )
        kill = rng.random() < 0.5
        fraction = rng.uniform(0.1, 0.9)
        action.kill_fraction = fraction if kill else 0.0
    elif kind == "crash" and templates:
        template = rng.choice(templates)
        action.crash_at = template.name(rng.choice(template.streams))
        delay = rng.uniform(0.1, 2.0)
        action.crash_delay = delay if template.later else None
    elif kind == "fault":
        action.fault_kind = rng.choice(FAULT_KINDS)
        paths: list[str | None] = [None, "profiles", "lists", "unsubscribes"]
        paths.append(f"lists/{rng.choice(sorted(ds.list_changes))}/changes")
        action.path = rng.choice(paths)
        if action.fault_kind == "429-storm":  # longer than the retries: the stream fails
            action.fault = rng.choice(("429", "429-retry-after"))
            action.count = MAX_ATTEMPTS + rng.randint(0, 2)
        elif action.fault_kind == "429-burst":
            action.fault, action.count = "429", rng.randint(1, MAX_ATTEMPTS - 1)
        elif action.fault_kind == "5xx-burst":
            action.fault = rng.choice(("500", "503"))
            action.count = rng.randint(1, MAX_ATTEMPTS + 1)
        elif action.fault_kind == "slow":
            action.fault, action.count = "slow", rng.randint(1, 2)
        else:
            action.fault, action.count = action.fault_kind, rng.randint(1, MAX_ATTEMPTS)
    else:
        action.kind = "none"
    return action


# --- one run of the job -----------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    killed_by_us: bool


def write_config(work: Path, server: EmulatorServer, exports: Path) -> Path:
    """The job's config: all five streams, short timeouts and few attempts (faults bite)."""
    config = {
        "account_id": ACCOUNT,
        "source_id": SOURCE,
        "api": {
            "base_url": server.url,
            "key_env": KEY_ENV,
            "page_size": 100,
            "requests_per_second": 200,
            "max_attempts": MAX_ATTEMPTS,
            "timeout_seconds": TIMEOUT_SECONDS,
        },
        "exports": {"email_events_path": str(exports), "format": "csv"},
        "storage": {"raw_path": str(work / "raw"), "tables_path": str(work / "tables")},
        "sync": {"streams": list(STREAMS), "start_date": "2025-06-01"},
    }
    path = work / "chaos.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.killpg(pgid, signal.SIGKILL)


def run_job(
    config: Path,
    logs: Path,
    *,
    crash_at: str | None,
    crash_delay: float | None,
    kill_after: float | None,
    tz: str,
) -> Outcome:
    """One sync in its own process group; SIGKILL to the group after ``kill_after`` s."""
    env = {
        **os.environ,
        KEY_ENV: KEY,
        "OMETRIA_SPARK_MASTER": "local[2]",
        "JAVA_TOOL_OPTIONS": FAST_JVM,
        "TZ": tz,
    }
    env.pop("OMETRIA_SPARK_CRASH_AT", None)
    env.pop("OMETRIA_SPARK_CRASH_DELAY", None)
    if crash_at:
        env["OMETRIA_SPARK_CRASH_AT"] = crash_at
    if crash_delay is not None:
        env["OMETRIA_SPARK_CRASH_DELAY"] = f"{crash_delay:.3f}"
    cmd = [sys.executable, str(ROOT / "jobs" / "ometria_sync.py"), "--config", str(config)]
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    started = time.monotonic()
    killed = False
    with out_path.open("w", encoding="utf-8") as out, err_path.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            returncode = proc.wait(timeout=kill_after if kill_after is not None else RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc.pid)
            returncode = proc.wait()
        finally:
            _kill_group(proc.pid)  # a JVM outliving its killed driver dies with it
    seconds = time.monotonic() - started
    return Outcome(
        returncode,
        seconds,
        out_path.read_text(encoding="utf-8", errors="replace"),
        err_path.read_text(encoding="utf-8", errors="replace"),
        killed,
    )


def stream_statuses(stdout: str) -> dict[str, str]:
    """``{stream: status}`` from the summary the job prints."""
    statuses = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in STREAMS:
            statuses[parts[0]] = parts[1]
    return statuses


# --- checking the tables ----------------------------------------------------------------


@dataclass
class Check:
    checked: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)


def compare_table(
    spark: SparkSession,
    config: Config,
    name: str,
    want: list[Any],
    *,
    exact: bool = True,
    maybe: frozenset[str] = frozenset(),
) -> Check:
    """The table against the expected rows (without ``__synced_at``), value by value as
    Spark types them (``tests.frames.typed_rows``: the expected rows as ``collect`` would
    give them back, without a trip through the JVM).

    ``exact=False`` counts duplicates and unexpected rows only; keys in ``maybe`` (deleted
    profiles) may be there or not."""
    schema = StructType([f for f in TABLES[name].schema.fields if f.name != SYNCED_AT])
    key_at = schema.fieldNames().index(KEY_COLUMN)
    table = spark.read.format("delta").load(config.table_location(name))
    got_rows = [tuple(r) for r in table.select(*schema.fieldNames()).collect()]
    want_rows = [tuple(r) for r in typed_rows(want, schema)]
    got: dict[Any, list[tuple[Any, ...]]] = {}
    for row in got_rows:
        got.setdefault(row[key_at], []).append(row)
    wanted = {row[key_at]: row for row in want_rows}
    check = Check(checked=len(want_rows) if exact else 0)
    for key, row in wanted.items():
        if exact and row not in got.get(key, []):
            check.lost += 1
            if len(check.examples) < 3:
                check.examples.append(f"{name}: want {row}, got {got.get(key)}")
    for key, rows in got.items():
        check.duplicated += len(rows) - 1
        if key not in wanted and key not in maybe:
            check.unexpected += len(rows)
            if len(check.examples) < 3:
                check.examples.append(f"{name}: unexpected {rows[0]}")
    return check


def expected_rows(ds: Dataset, events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    rows = {name: build(ds, SOURCE, ACCOUNT) for name, build in expected.BUILDERS.items()}
    rows["email_events"] = expected.email_events(events, SOURCE, ACCOUNT)
    return rows


# --- the campaign -----------------------------------------------------------------------


@dataclass
class Figures:
    seed: int
    runs: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    missed: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fault_answers: int = 0
    clean: int = 0
    failed_stream: int = 0
    days: int = 0
    deleted: int = 0
    comparisons: int = 0
    rows_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    leaks: int = 0
    anomalies: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kinds: list[str] = field(default_factory=list)
    cut_short: bool = False

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.leaks or self.anomalies)

    def table(self, profiles: int, lists: int) -> list[str]:
        def by_kind(counter: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"

        rows = [
            ("seed", f"{self.seed} ({profiles} profiles, {lists} lists)"),
            (
                "runs",
                f"{self.runs} ({by_kind(Counter(self.kinds))}; then one clean)"
                + (" (cut short by --max-minutes)" if self.cut_short else ""),
            ),
            ("kills", f"{sum(self.kills.values())} ({by_kind(self.kills)})"),
            ("kills missed", f"{sum(self.missed.values())} ({by_kind(self.missed)})"),
            ("faults injected", f"{sum(self.faults.values())} ({by_kind(self.faults)})"),
            ("fault answers served", str(self.fault_answers)),
            ("clean completions", str(self.clean)),
            ("failed-stream runs", str(self.failed_stream)),
            ("days advanced", str(self.days)),
            ("profiles deleted live", str(self.deleted)),
            ("tables compared", str(self.comparisons)),
            ("rows checked", str(self.rows_checked)),
            ("rows lost", str(self.lost)),
            ("rows duplicated", str(self.duplicated)),
            ("rows unexpected", str(self.unexpected)),
            ("key leaks", str(self.leaks)),
            ("anomalies", str(len(self.anomalies))),
            ("wall time", f"{self.seconds:.0f} s"),
        ]
        return [f"{name:<22}{value}" for name, value in rows]


class Campaign:
    def __init__(self, args: argparse.Namespace, work: Path, server: EmulatorServer) -> None:
        self.args = args
        self.work = work
        self.server = server
        self.ds = server.dataset
        self.exports = work / "exports"
        self.config_path = write_config(work, server, self.exports)
        self.config = load_config(self.config_path)
        self.logs = work / "logs"
        self.logs.mkdir()
        self.figures = Figures(args.seed)
        self.exported: list[dict[str, Any]] = []
        self.durations: list[float] = []
        self.templates = crash_templates()
        self._spark: SparkSession | None = None
        self.export_new_events(compress=True)

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:  # started at the first check, while no job runs
            self._spark = get_spark(
                "ometria-chaos",
                extra_conf={
                    "spark.sql.shuffle.partitions": "2",
                    "spark.default.parallelism": "2",
                    "spark.driver.memory": "1g",
                    "spark.databricks.delta.snapshotPartitions": "1",
                    "spark.driver.extraJavaOptions": JVM_FLAGS,
                    **INTERPRETED,
                },
                s3a=False,
            )
        return self._spark

    def export_new_events(self, *, compress: bool) -> int:
        known = {id(e) for e in self.exported}
        new = [e for e in self.ds.email_events if id(e) not in known]
        write_local(self.exports, export_files(new, files=2, compress=compress))
        self.exported.extend(new)
        return len(new)

    def typical(self) -> float:
        return statistics.median(self.durations) if self.durations else DEFAULT_TYPICAL

    def fault_backlog(self) -> int:
        """Injected faults not served yet (then forgotten, so none leaks into a later run)."""
        with self.server._lock:
            left = sum(int(entry[1]) for entry in self.server._faults)
            self.server._faults.clear()
        return left

    def verify(self, streams: list[str], label: str, *, exact: bool = True) -> None:
        want = expected_rows(self.ds, self.exported)
        deleted = frozenset(expected.md5(SOURCE, p["id"]) for p in self.ds.deleted)
        for name in streams:
            maybe = deleted if name == "profiles" else frozenset()
            check = compare_table(self.spark, self.config, name, want[name], exact=exact,
                                  maybe=maybe)  # fmt: skip
            f = self.figures
            f.comparisons += 1
            f.rows_checked += check.checked
            f.lost += check.lost
            f.duplicated += check.duplicated
            f.unexpected += check.unexpected
            if check.lost or check.duplicated or check.unexpected:
                print(f"  !! {label} {name}: lost {check.lost}, duplicated {check.duplicated}, "
                      f"unexpected {check.unexpected}")  # fmt: skip
                for example in check.examples:
                    print(f"     {example[:400]}")

    def one_run(self, number: int, action: Action) -> int:
        """Run the job once under ``action``, check what it left; its exit status."""
        f = self.figures
        f.runs += 1
        typical = self.typical()
        label = f"run {number:02d}"
        print(f"{label} tz={action.tz:<19} {action.describe(typical)}", flush=True)
        if action.kind == "fault":
            self.server.inject(action.fault, action.count, action.path)
            f.faults[action.fault_kind] += action.count
        kills = action.kind == "kill" or (action.kind == "live" and action.kill_fraction > 0)
        kill_after = action.kill_fraction * typical if kills else None
        self.server.live = action.live
        try:
            outcome = run_job(
                self.config_path, self.logs / f"run-{number:02d}", crash_at=action.crash_at,
                crash_delay=action.crash_delay, kill_after=kill_after, tz=action.tz,
            )  # fmt: skip
        finally:
            self.server.live = None
        # While the account changed under it, a run may leave a change for the next run.
        exact = action.kind != "live"
        if action.kind == "fault":
            f.fault_answers += action.count - self.fault_backlog()
        if KEY in outcome.stdout or KEY in outcome.stderr:
            f.leaks += 1
            f.anomalies.append(f"{label}: the API key is in the job's output")
        rc = outcome.returncode
        statuses = stream_statuses(outcome.stdout)
        shown = " ".join(f"{stream}={status}" for stream, status in statuses.items())
        print(f"  -> exit {rc} after {outcome.seconds:.1f}s {shown}", flush=True)
        if rc == -signal.SIGKILL:
            f.kills["outside" if outcome.killed_by_us else phase(action.crash_at or "?")] += 1
            if not outcome.killed_by_us and action.kind != "crash":
                f.anomalies.append(f"{label}: killed, but by whom?")
            return rc
        if kills:
            f.missed["run ended first"] += 1
        elif action.kind == "crash":
            f.missed[f"{phase(action.crash_at or '?')} not reached"] += 1
        if rc == 0:
            f.clean += 1
            if exact:
                self.durations.append(outcome.seconds)
            self.verify(list(STREAMS), label, exact=exact)
            return rc
        succeeded = [s for s in STREAMS if statuses.get(s) == "succeeded"]
        reasons = [line for line in outcome.stderr.splitlines() if line.startswith("ometria-sync:")]
        if rc == 1 and action.kind == "fault" and reasons and statuses:
            f.failed_stream += 1
            print(f"  {reasons[-1][:300]}")
            self.verify(succeeded, label, exact=exact)
            return rc
        tail = outcome.stderr.strip().splitlines()[-3:]
        f.anomalies.append(f"{label}: exit {rc} ({action.describe(typical)}): {tail}")
        print(f"  !! unexpected exit {rc}: {tail}")
        return rc

    def campaign(self) -> None:
        kinds_rng = random.Random(self.args.seed)
        rng = random.Random(self.args.seed + 1)
        print(f"crash points: {', '.join(t.template for t in self.templates) or 'none found'}")
        block: list[str] = []
        deadline = time.monotonic() + self.args.max_minutes * 60
        for number in range(1, self.args.runs + 1):
            if time.monotonic() > deadline:
                print(f"!! --max-minutes {self.args.max_minutes} reached after {number - 1} runs")
                self.figures.cut_short = True
                break
            if number > 1 and (number - 1) % self.args.day_every == 0:
                self.ds.advance_day()
                new = self.export_new_events(compress=rng.random() < 0.5)
                self.figures.days += 1
                print(f"-- a day later: {len(self.ds.profiles)} profiles, {new} new events")
            if not block:
                block = list(BLOCK)
                kinds_rng.shuffle(block)
            kind = block.pop()
            self.figures.kinds.append(kind)
            self.one_run(number, choose(kind, rng, self.templates, self.ds))
            if self.figures.lost or self.figures.duplicated or self.figures.unexpected:
                print("!! stopping at the first loss or duplicate; the tables are kept")
                return
        # The end: one clean run must complete and leave every table exact.
        if self.one_run(self.figures.runs + 1, Action("none", tz="UTC")) != 0:
            self.figures.anomalies.append("the final clean run did not complete")

    def scan_for_key(self) -> None:
        """No file the job wrote (landed pages, tables, logs) holds the key."""
        needle = KEY.encode("utf-8")
        for path in self.work.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                self.figures.leaks += 1
                self.figures.anomalies.append(f"the API key is in {path}")


CHAOS_INTRO = (
    "# Chaos campaign results\n\nAppended by `make chaos` (`tests/reliability/chaos.py`); "
    "newest last.\n\n"
)


def record(results: Path, command: str, lines: list[str]) -> None:
    append("Chaos campaign", lines, results, intro=CHAOS_INTRO, command=command)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="disturbed runs (then one clean)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profiles", type=int, default=300)
    parser.add_argument("--lists", type=int, default=3)
    parser.add_argument("--day-every", type=int, default=4, help="a day of changes every N runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="file to append figures to")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--max-minutes", type=float, default=60.0, help="start no disturbed run after this"
    )
    return parser.parse_args(argv)


def run_campaign(argv: list[str] | None = None) -> Figures:
    """Run the campaign, print and record its figures, and return them."""
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ometria-chaos-"))
    dataset = Dataset.generate(seed=args.seed, profiles=args.profiles, lists=args.lists)
    print(f"chaos: seed {args.seed}, {args.runs} runs, work folder {work}", flush=True)
    with EmulatorServer(dataset, api_key=KEY) as server:
        campaign = Campaign(args, work, server)
        try:
            campaign.campaign()
        finally:
            campaign.scan_for_key()
    figures = campaign.figures
    figures.seconds = time.monotonic() - started
    figures.deleted = len(dataset.deleted)
    lines = figures.table(args.profiles, args.lists)
    print("\n".join(["", *lines]))
    for anomaly in figures.anomalies:
        print(f"!! {anomaly}")
    command = f"python -m tests.reliability.chaos --runs {args.runs} --seed {args.seed}"
    record(args.results, command, lines)
    if figures.ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work}")
    return figures


def main(argv: list[str] | None = None) -> int:
    figures = run_campaign(argv)
    if not figures.ok:
        print("chaos: FAILED (rows lost, duplicated or unexpected, a leak, or an anomaly)")
        return 1
    print("chaos: 0 rows lost, 0 rows duplicated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
