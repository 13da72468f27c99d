"""Command line: ``ometria-sync [sync] --config FILE [--streams a,b] [--full-refresh]``,
``ometria-sync maintain --config FILE`` and ``ometria-sync erase --config FILE (--email A |
--profile-id ID)...``.

Used by ``jobs/ometria_sync.py`` (spark-submit) and as the console entry point of the
wheel (Databricks ``python_wheel_task``). Exit status: 0 when every stream (table) succeeded,
1 when any failed (the others still ran and committed) or the run lock refused, 2 for bad
arguments or config.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ometria_spark.config import Config, ConfigError, all_streams, load_config
from ometria_spark.phases import PhaseHook, no_hook, phase_of
from ometria_spark.state import RunRecord

if TYPE_CHECKING:  # (pyspark is imported late: config errors answer without a JVM)
    from pyspark.sql import SparkSession

    from ometria_spark.maintain import Upkeep

log = logging.getLogger("ometria_spark")

COLUMNS = (
    ("stream", 13),
    ("status", 9),
    ("pages", 6),
    ("files", 6),
    ("read", 9),
    ("inserted", 9),
    ("updated", 8),
    ("quarant.", 8),
    ("bad vals", 8),
    ("collapsed", 9),
    ("cursor", 20),
)


# For the crash tests (tests/reliability): kill this process at a named phase.
CRASH_AT_ENV = "OMETRIA_SPARK_CRASH_AT"
CRASH_DELAY_ENV = "OMETRIA_SPARK_CRASH_DELAY"


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_hook_from_env(environ: Mapping[str, str]) -> PhaseHook:
    """``OMETRIA_SPARK_CRASH_AT=name[#n]``: a phase hook that kills this process with
    SIGKILL (no cleanup, no flush: as a lost driver or an OOM kill does) the ``n``-th time
    (default: the first) the run reaches phase ``name``; at a *during* phase the kill comes
    from a timer ``OMETRIA_SPARK_CRASH_DELAY`` seconds (default 1.0) later, while the step
    runs. Unset: no hook. A name that is no declared phase raises ``ValueError``."""
    spec = environ.get(CRASH_AT_ENV)
    if not spec:
        return no_hook
    name, _, nth = spec.partition("#")
    phase = phase_of(name)
    if phase is None or (nth and not nth.isdigit()):
        raise ValueError(f"{CRASH_AT_ENV}={spec!r} names no phase (see ometria_spark.phases)")
    target = int(nth or 1)
    delay = float(environ.get(CRASH_DELAY_ENV, "1.0"))
    reached = 0

    def hook(phase_name: str) -> None:
        nonlocal reached
        if phase_name != name:
            return
        reached += 1
        if reached != target:
            return
        if phase.during:
            timer = threading.Timer(delay, _kill)
            timer.daemon = True
            timer.start()
        else:
            _kill()

    return hook


COMMANDS = ("sync", "maintain", "erase")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command (first word, default ``sync``) and its options."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = words.pop(0) if words and words[0] in COMMANDS else "sync"
    parser = argparse.ArgumentParser(
        prog=f"ometria-sync {command}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="YAML config file (see conf/example.yaml)")
    if command == "sync":
        parser.add_argument(
            "--streams",
            help=f"comma-separated subset of: {', '.join(all_streams())} (default: config)",
        )
        parser.add_argument(
            "--full-refresh",
            action="store_true",
            help="ignore cursors and loaded-file records: re-read everything (rows are upserted)",
        )
    if command == "erase":
        parser.add_argument("--email", action="append", default=[], help="erase this address")
        parser.add_argument("--profile-id", action="append", default=[], help="erase this id")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set api.base_url=http://127.0.0.1:8080/v2",
    )
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    args = parser.parse_args(words)
    args.command = command
    if command == "erase" and not (args.email or args.profile_id):
        parser.error("give at least one --email or --profile-id")
    return args


def summary(records: list[RunRecord]) -> str:
    """The per-stream table printed at the end of a run."""
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS)]
    for r in records:
        values = (
            r.stream,
            r.status,
            r.pages,
            r.files,
            r.records_read,
            r.rows_inserted,
            r.rows_updated,
            r.quarantined,
            r.bad_values,
            r.collapsed,
            r.cursor_after or "-",
        )
        lines.append("  ".join(str(v).ljust(w) for v, (_, w) in zip(values, COLUMNS, strict=True)))
        if r.error:
            lines.append(f"  ! {r.stream}: {r.error}")
        if r.warnings:
            lines.append(f"  ~ {r.stream}: {r.warnings}")
    return "\n".join(lines)


def entry() -> None:
    """Console script: exit with ``main``'s status (a wheel task runner may ignore a
    returned value, never a SystemExit)."""
    raise SystemExit(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"ometria-sync: --set takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key.strip()] = value
    if getattr(args, "streams", None):
        overrides["sync.streams"] = args.streams
    try:
        config = load_config(args.config, overrides)
    except (ConfigError, OSError) as exc:
        print(f"ometria-sync: config error: {exc}", file=sys.stderr)
        return 2

    try:
        on_phase = crash_hook_from_env(os.environ)
    except ValueError as exc:
        print(f"ometria-sync: {exc}", file=sys.stderr)
        return 2

    # Imported late: argument and config errors answer without starting a JVM.
    from ometria_spark.spark import get_spark, s3a_conf
    from ometria_spark.sync import run

    try:
        spark = get_spark(
            hadoop_conf=s3a_conf(config),
            s3a=config.uses_s3a(),
        )
    except RuntimeError as exc:  # no Delta in a reused session, jars not fetched
        print(f"ometria-sync: {exc}", file=sys.stderr)
        return 2

    if args.command == "maintain":
        return run_maintain(spark, config)
    if args.command == "erase":
        return run_erase(spark, config, args.email, args.profile_id)

    # This process's session ends with it: names in an in-memory catalog would die unseen.
    lasting_catalog = spark.conf.get("spark.sql.catalogImplementation", "in-memory") != "in-memory"

    def progress(stream: str, pages: int, records: int) -> None:
        if pages % 20 == 0:
            log.info("%s: %d pages, %d records fetched", stream, pages, records)

    report = run(
        spark, config, full_refresh=args.full_refresh, on_page=progress,
        register_names=lasting_catalog, on_phase=on_phase,
    )  # fmt: skip
    print(f"run {report.run_id}")
    print(summary(report.streams))
    return exit_status(report.streams)


def exit_status(records: list[RunRecord]) -> int:
    """0 when every stream succeeded; else 1, with the reasons on stderr."""
    failed = [r for r in records if r.status != "succeeded"]
    if failed and all(r.status == "refused" for r in failed):
        print(f"ometria-sync: refused to run: {failed[0].error}", file=sys.stderr)
        return 1
    if failed:
        print(
            f"ometria-sync: {len(failed)} stream(s) failed: "
            + "; ".join(f"{r.stream}: {r.error}" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


def run_maintain(spark: SparkSession, config: Config) -> int:
    from ometria_spark.maintain import maintain
    from ometria_spark.maintain import summary as upkeep_summary

    done = maintain(spark, config)
    print(upkeep_summary(done))
    return maintain_status(done)


def maintain_status(done: list[Upkeep]) -> int:
    """0 unless a table's upkeep failed (absent tables are fine)."""
    failed = [u for u in done if u.status == "failed"]
    if failed:
        print(f"ometria-sync: upkeep failed for {', '.join(u.table for u in failed)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def run_erase(spark: SparkSession, config: Config, emails: list[str], ids: list[str]) -> int:
    """Erase and print what went (counts only: an identifier is never printed)."""
    from ometria_spark.erase import erase
    from ometria_spark.errors import one_line
    from ometria_spark.lock import SyncLockedError

    try:
        result = erase(spark, config, emails, ids)
    except SyncLockedError as exc:
        print(f"ometria-sync: refused to run: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"ometria-sync: erase failed: {one_line(exc, '')}", file=sys.stderr)
        return 1
    print(f"erasure {result.erasure_id}: {len(emails)} email(s), {len(ids)} profile id(s)")
    for table, rows in result.rows_removed.items():
        vacuumed = result.files_vacuumed.get(table, 0)
        print(f"{table:<15}{rows:>8} rows removed{vacuumed:>8} files vacuumed")
    print(f"raw pages: {result.page_records_removed} records removed from "
          f"{result.pages_rewritten} pages")  # fmt: skip
    return 0
