"""The class archive: which JVM options a local session gets, and that an archive that does
not fit (damaged, another Java build) never stops a JVM from starting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ometria_spark import jvm_archive
from ometria_spark.jars import ARTIFACTS

QUIET = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]


def test_options_use_write_or_skip_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "classes.jsa"
    monkeypatch.delenv(jvm_archive.DUMP_ENV, raising=False)
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, str(archive))
    assert jvm_archive.java_options() == []  # not built: nothing
    archive.write_bytes(b"archive")
    assert jvm_archive.java_options() == [f"-XX:SharedArchiveFile={archive}", *QUIET]
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, "OFF")
    assert jvm_archive.archive_path() is None and jvm_archive.java_options() == []
    monkeypatch.setenv(jvm_archive.DUMP_ENV, str(tmp_path / "new.jsa"))
    assert jvm_archive.java_options() == [f"-XX:ArchiveClassesAtExit={tmp_path}/new.jsa", *QUIET]
    assert jvm_archive.build() == 0 and not (tmp_path / "new.jsa").exists()  # off: no build


def test_the_default_archive_is_named_by_what_it_was_made_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(jvm_archive.ARCHIVE_ENV, raising=False)
    monkeypatch.setenv("OMETRIA_SPARK_M2_REPO", str(tmp_path / "m2"))
    for artifact in ARTIFACTS:
        jar = artifact.path(tmp_path / "m2")
        jar.parent.mkdir(parents=True)
        jar.write_bytes(b"jar")
    before = jvm_archive.archive_path()
    assert before is not None and before.name.startswith("classes-")
    ARTIFACTS[0].path(tmp_path / "m2").write_bytes(b"another jar")  # an upgrade
    after = jvm_archive.archive_path()
    assert after is not None and after != before and after.parent == before.parent


@pytest.mark.parametrize("kind", ["empty", "not an archive", "this machine's, elsewhere"])
def test_an_archive_that_does_not_fit_is_ignored_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    java = jvm_archive._java()
    assert java is not None
    archive = tmp_path / "classes.jsa"
    if kind == "empty":
        archive.write_bytes(b"")
    elif kind == "not an archive":
        archive.write_bytes(b"not an archive" * 100)
    else:  # the archive `make setup` built, on a JVM without Spark's class path
        monkeypatch.delenv(jvm_archive.ARCHIVE_ENV, raising=False)
        built = jvm_archive.archive_path()
        if built is None or not built.is_file():
            pytest.skip("no class archive built on this machine (make setup builds one)")
        archive = built
    monkeypatch.delenv(jvm_archive.DUMP_ENV, raising=False)
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, str(archive))
    options = jvm_archive.java_options()
    classes = tmp_path / "classes"
    classes.mkdir()
    assert options[0] == f"-XX:SharedArchiveFile={archive}"
    started = subprocess.run(
        [str(java), "-cp", str(classes), *options, "-version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    assert [line for line in started.stderr.splitlines() if "warning" in line.lower()] == []


def test_the_session_gets_the_archive_before_its_own_options(spark: SparkSession) -> None:
    options = spark.conf.get("spark.driver.extraJavaOptions") or ""
    assert options.split() == [*jvm_archive.java_options(), "-XX:+UseSerialGC"]
