"""The JVM jars a local (non-Databricks) Spark session needs, and how to fetch them.

pyspark ships Spark and Hadoop's client jars but neither Delta nor hadoop-aws. We list the
exact artifacts (no transitive resolution at session start: Spark's Ivy resolver trips on
artifacts whose POM sits in ``~/.m2`` without a jar, and pulls in Delta Kernel's logging and
Jackson versions that Spark already ships), fetch each once into the local Maven repository
with ``mvn dependency:get``, and hand their paths to ``spark.jars``.

``python -m ometria_spark.jars fetch`` downloads what is missing;
``python -m ometria_spark.jars`` prints the comma-separated list for ``spark-submit --jars``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyspark


@dataclass(frozen=True)
class Artifact:
    group: str
    name: str
    version: str

    @property
    def coordinate(self) -> str:
        return f"{self.group}:{self.name}:{self.version}"

    def path(self, repository: Path) -> Path:
        return (
            repository.joinpath(*self.group.split("."))
            / self.name
            / self.version
            / f"{self.name}-{self.version}.jar"
        )


# pyspark 4.1.x bundles Hadoop 3.4.2: hadoop-aws must be the same release, and its AWS SDK v2
# bundle the one that release was built with (a mismatch fails with NoSuchFieldError).
SPARK_MINOR = "4.1"
ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("io.delta", f"delta-spark_{SPARK_MINOR}_2.13", "4.3.1"),
    Artifact("io.delta", "delta-storage", "4.3.1"),
    Artifact("org.apache.hadoop", "hadoop-aws", "3.4.2"),
    Artifact("software.amazon.awssdk", "bundle", "2.29.52"),
    Artifact("software.amazon.s3.analyticsaccelerator", "analyticsaccelerator-s3", "1.2.1"),
)


def maven_repository() -> Path:
    """The local Maven repository: ``$OMETRIA_SPARK_M2_REPO`` or ``~/.m2/repository``."""
    configured = os.environ.get("OMETRIA_SPARK_M2_REPO")
    return Path(configured) if configured else Path.home() / ".m2" / "repository"


# Delta's two jars; the others are only for s3a:// (the AWS SDK bundle alone is ~600 MB,
# and putting it on a session that never touches S3 costs about a second at start-up).
DELTA_ARTIFACTS = 2


def jar_paths(repository: Path | None = None, *, s3a: bool = True) -> list[Path]:
    """The jars a local session lists in ``spark.jars``; without ``s3a``, Delta's only."""
    repo = repository or maven_repository()
    artifacts = ARTIFACTS if s3a else ARTIFACTS[:DELTA_ARTIFACTS]
    return [artifact.path(repo) for artifact in artifacts]


def missing_jars(repository: Path | None = None) -> list[Path]:
    return [path for path in jar_paths(repository) if not path.is_file()]


def check_spark_version() -> None:
    if not pyspark.__version__.startswith(SPARK_MINOR + "."):
        raise RuntimeError(
            f"pyspark {pyspark.__version__} is installed but the jar list is for Spark "
            f"{SPARK_MINOR}.x; reinstall with `make setup`"
        )


def fetch(repository: Path | None = None) -> None:
    """Download every missing artifact (jar and POM, not its dependencies) with Maven."""
    check_spark_version()
    repo = repository or maven_repository()
    todo = [a for a in ARTIFACTS if not a.path(repo).is_file()]
    if not todo:
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit(
            "Maven (`mvn`) is needed once to fetch Delta's and hadoop-aws's jars: "
            "install it (e.g. `apt-get install maven`) and rerun `make setup`"
        )
    for artifact in todo:
        print(f"fetching {artifact.coordinate}", file=sys.stderr)
        cmd = [
            mvn,
            "--batch-mode",
            "--quiet",
            f"-Dmaven.repo.local={repo}",
            "dependency:get",
            "-Dtransitive=false",
            f"-Dartifact={artifact.coordinate}",
        ]
        subprocess.run(cmd, check=True)
    still_missing = missing_jars(repo)
    if still_missing:
        raise SystemExit(f"jars still missing after fetch: {', '.join(map(str, still_missing))}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        fetch()
        return 0
    missing = missing_jars()
    if missing:
        print(f"missing jars (run `make setup`): {missing}", file=sys.stderr)
        return 1
    print(",".join(str(p) for p in jar_paths()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
