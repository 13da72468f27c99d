"""A class-data-sharing archive for the local Spark JVM: a short run starts faster.

A local run spends most of its time starting the JVM and loading Spark's and Delta's
classes (a sync with nothing new: about 24 s, most of it class loading and start-up).
JDK 17 can write the classes a run loaded, parsed and verified, into a dynamic archive
(``-XX:ArchiveClassesAtExit``) and map it into later JVMs (``-XX:SharedArchiveFile``).
Measured here, side by side: a sync with nothing new 21.1-23.8 s -> 13.3-17.2 s wall and
25.9-29.1 -> 17.3-22.5 CPU seconds (README, Performance).

- ``make setup`` runs ``python -m ometria_spark.jvm_archive build``: one small demo sync
  (the emulator, every stream) in a JVM that writes the archive when it exits, about
  2-3 minutes once per machine. Its name holds a fingerprint of the Java binary, pyspark and the
  jars, so an upgrade builds a new one and never uses a stale one.
- A local session (``ometria_spark.spark``) starts its JVM with the archive when there is
  one. The JVM checks it (its Java build, its class path) and, should it not fit, ignores
  it silently: an archive can make a start slower by nothing but a file read, never fail it.
- ``OMETRIA_SPARK_CLASS_ARCHIVE``: unset, the archive under this Python's prefix
  (``.venv/share/ometria-spark/``); ``off``, none; any other value, that file.
- spark-submit and Databricks start their JVM before Python runs: there the archive is not
  used (spark-submit users can pass the same options in ``--driver-java-options``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyspark

from ometria_spark import jars

ARCHIVE_ENV = "OMETRIA_SPARK_CLASS_ARCHIVE"
# Set by ``build`` for the training run only: the JVM writes its archive there at exit.
DUMP_ENV = "OMETRIA_SPARK_CLASS_ARCHIVE_DUMP"
# Quiet: a missing or unfitting archive is not worth a line on every start.
_QUIET = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")
TRAINING_PROFILES = 100


def _java() -> Path | None:
    """The Java binary pyspark starts: ``$JAVA_HOME/bin/java``, else ``java`` on the PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def fingerprint() -> str:
    """What the archive was made with: the Java binary, pyspark and the jars (path, size)."""
    parts = [pyspark.__version__]
    java = _java()
    parts.append(f"{java}:{java.stat().st_mtime_ns}" if java else "no-java")
    for jar in jars.jar_paths():
        parts.append(f"{jar}:{jar.stat().st_size if jar.is_file() else -1}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def archive_path() -> Path | None:
    """Where this machine's archive is (or would be built); None when switched off."""
    configured = os.environ.get(ARCHIVE_ENV, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "ometria-spark" / f"classes-{fingerprint()}.jsa"


def java_options() -> list[str]:
    """The driver JVM's options for the archive: write it (a training run), use it (it
    exists), or none."""
    dump = os.environ.get(DUMP_ENV)
    if dump:
        return [f"-XX:ArchiveClassesAtExit={dump}", *_QUIET]
    path = archive_path()
    if path is None or not path.is_file():
        return []
    return [f"-XX:SharedArchiveFile={path}", *_QUIET]


def build(profiles: int = TRAINING_PROFILES) -> int:
    """Write the archive unless it exists: a small demo sync in a JVM that dumps its
    classes at exit. A failure is reported and leaves no archive (runs work without)."""
    path = archive_path()
    if path is None:
        print(f"class archive: off ({ARCHIVE_ENV}=off)", file=sys.stderr)
        return 0
    if path.is_file():
        print(f"class archive: {path} (up to date)", file=sys.stderr)
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ometria-class-archive-") as work:
        partial = Path(work) / "classes.jsa"
        env = {**os.environ, DUMP_ENV: str(partial), "OMETRIA_SPARK_MASTER": "local[2]"}
        env.pop(ARCHIVE_ENV, None)
        command = [sys.executable, "-m", "ometria_spark.demo", "--profiles", str(profiles),
                   "--dir", f"{work}/data", "--warehouse", f"{work}/warehouse"]  # fmt: skip
        print("class archive: one small demo sync to record the JVM's classes", file=sys.stderr)
        # In a session of its own: the JVM outlives the demo's Python by the seconds it
        # takes to write the archive, and is waited for as a member of that group.
        demo = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        code = demo.wait()
        _wait_for_group(demo.pid)
        if code != 0 or not partial.is_file():
            print(f"class archive: not built (demo exit {code}); runs start without it",
                  file=sys.stderr)  # fmt: skip
            return 0
        for old in path.parent.glob("classes-*.jsa"):
            old.unlink()
        shutil.move(str(partial), path)
    print(f"class archive: {path} ({path.stat().st_size // 2**20} MB)", file=sys.stderr)
    return 0


def _wait_for_group(group: int, timeout: float = 300.0) -> None:
    """Until no process of the process group is left (or ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        return build()
    path = archive_path()
    print(path if path is not None and path.is_file() else "no class archive")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
