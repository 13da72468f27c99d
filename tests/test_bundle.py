"""The Databricks Asset Bundle (databricks.yml + resources/) fits the project it deploys.

The Databricks CLI that validates bundles is not installable here, so these checks read the
YAML and hold it against pyproject.toml, the CLI and the config loader: the wheel task
names our distribution and console script, its config file exists and loads, dev never
runs on a schedule, and no file carries a secret.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ometria_spark import cli
from ometria_spark.config import load_config
from ometria_spark.demo import DEMO_KEY

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "databricks.yml"
JOB_FILE = ROOT / "resources" / "ometria_sync.job.yml"
JOB = "ometria_sync"
FILE_PATH = "${workspace.file_path}"  # the bundle's synced copy of this repository

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Mapping keys that may name a secret (scope/key), but never hold one.
SECRET_NAME_KEYS = {"key_secret_scope", "key_secret_key", "key_env"}
SECRETISH_KEY = re.compile(r"(api_?key|password|passwd|token|secret|credential)", re.I)
SECRETISH_VALUE = re.compile(
    r"dapi[0-9a-f]{16,}"  # Databricks personal access token
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|[A-Za-z0-9+/_=-]{32,}"  # any long opaque token
)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return load(BUNDLE)


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    jobs = load(JOB_FILE)["resources"]["jobs"]
    assert list(jobs) == [JOB]
    job: dict[str, Any] = jobs[JOB]
    return job


@pytest.fixture(scope="module")
def task(job: dict[str, Any]) -> dict[str, Any]:
    (task,) = job["tasks"]
    assert isinstance(task, dict)
    return task


def test_bundle_includes_the_job_and_builds_the_wheel(bundle: dict[str, Any]) -> None:
    assert bundle["bundle"]["name"] == "ometria-spark"
    included = [
        p.relative_to(ROOT).as_posix() for pattern in bundle["include"] for p in ROOT.glob(pattern)
    ]
    assert JOB_FILE.relative_to(ROOT).as_posix() in included
    (artifact,) = bundle["artifacts"].values()
    assert artifact["type"] == "whl"
    assert (ROOT / artifact["path"]).resolve() == ROOT
    assert "pip wheel" in artifact["build"] and "--wheel-dir dist" in artifact["build"]


def test_targets_dev_is_default_development_and_prod_is_production(
    bundle: dict[str, Any],
) -> None:
    targets = bundle["targets"]
    assert set(targets) == {"dev", "prod"}
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert targets["prod"]["mode"] == "production"
    assert not targets["prod"].get("default", False)


def test_task_runs_the_console_script_of_our_wheel(
    bundle: dict[str, Any], task: dict[str, Any]
) -> None:
    wheel_task = task["python_wheel_task"]
    assert wheel_task["package_name"] == PYPROJECT["project"]["name"]
    scripts = PYPROJECT["project"]["scripts"]
    assert wheel_task["entry_point"] in scripts

    module, _, attr = scripts[wheel_task["entry_point"]].partition(":")
    target = getattr(importlib.import_module(module), attr)
    assert callable(target) and target is cli.entry

    # The installed distribution declares the same console script.
    eps = importlib.metadata.distribution(wheel_task["package_name"]).entry_points
    assert {ep.name: ep.value for ep in eps if ep.group == "console_scripts"} == scripts

    # The library is the artifact's wheel: resource paths are relative to their file.
    (artifact,) = bundle["artifacts"].values()
    dist = (ROOT / artifact["path"] / "dist").resolve()
    wheels = [lib["whl"] for lib in task["libraries"]]
    assert len(wheels) == 1
    wheel_glob = (JOB_FILE.parent / wheels[0]).resolve()
    assert wheel_glob.parent == dist
    assert fnmatch.fnmatch("ometria_spark-0.1.0-py3-none-any.whl", wheel_glob.name)


def test_task_parameters_are_valid_cli_arguments_with_a_loadable_config(
    task: dict[str, Any],
) -> None:
    params = task["python_wheel_task"]["parameters"]
    assert params == ["--config", f"{FILE_PATH}/conf/databricks.yaml"]
    args = cli.parse_args(params)
    assert args.config.startswith(f"{FILE_PATH}/")
    config_file = ROOT / args.config.removeprefix(f"{FILE_PATH}/")
    assert config_file.is_file()

    config = load_config(config_file)
    # Managed Unity Catalog tables, API key from a Databricks secret.
    assert config.storage.tables_path is None and config.storage.catalog == "main"
    assert config.table_location("profiles") == "main.ometria.profiles"
    assert config.storage.raw_path.startswith(("/Volumes/", "dbfs:/"))
    assert (config.api.key_secret_scope, config.api.key_secret_key) == ("ometria", "api_key")
    assert config.exports.email_events_path
    assert config.exports.email_events_path.startswith("s3a://")


def test_task_has_a_cluster_that_exists(job: dict[str, Any], task: dict[str, Any]) -> None:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    cluster = clusters[task["job_cluster_key"]]
    assert cluster["spark_version"] and cluster["node_type_id"]
    # The export reader uses the JVM gateway: not available in shared access mode.
    assert cluster["data_security_mode"] == "SINGLE_USER"
    assert job["max_concurrent_runs"] == 1


def effective_pause_status(bundle: dict[str, Any], job: dict[str, Any], target: str) -> str:
    override = bundle["targets"][target].get("resources", {}).get("jobs", {}).get(JOB, {})
    status = override.get("schedule", {}).get("pause_status", job["schedule"]["pause_status"])
    assert isinstance(status, str)
    return status


def test_hourly_schedule_paused_in_dev_running_in_prod(
    bundle: dict[str, Any], job: dict[str, Any]
) -> None:
    schedule = job["schedule"]
    # Quartz: second minute hour day-of-month month day-of-week -> every hour on the hour.
    assert schedule["quartz_cron_expression"].split() == ["0", "0", "*", "*", "*", "?"]
    assert schedule["timezone_id"] == "UTC"
    assert effective_pause_status(bundle, job, "dev") == "PAUSED"
    assert effective_pause_status(bundle, job, "prod") == "UNPAUSED"


MAINTENANCE_FILE = ROOT / "resources" / "ometria_maintenance.job.yml"


def test_the_daily_maintenance_job_runs_maintain_on_the_syncs_wheel_and_config(
    bundle: dict[str, Any], job: dict[str, Any], task: dict[str, Any]
) -> None:
    included = [p for pattern in bundle["include"] for p in ROOT.glob(pattern)]
    assert MAINTENANCE_FILE in included
    ((name, upkeep),) = load(MAINTENANCE_FILE)["resources"]["jobs"].items()
    assert name == "ometria_maintenance"
    (upkeep_task,) = upkeep["tasks"]
    wheel_task = upkeep_task["python_wheel_task"]
    params = wheel_task["parameters"]
    assert params == ["maintain", *task["python_wheel_task"]["parameters"]]
    assert cli.parse_args(params).command == "maintain"
    assert (wheel_task["package_name"], wheel_task["entry_point"]) == (
        task["python_wheel_task"]["package_name"], task["python_wheel_task"]["entry_point"],
    )  # fmt: skip
    assert upkeep_task["libraries"] == task["libraries"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in upkeep["job_clusters"]}
    assert clusters[upkeep_task["job_cluster_key"]] == job["job_clusters"][0]["new_cluster"]
    # Daily at 03:30 UTC; paused in dev, running in prod.
    assert upkeep["schedule"]["quartz_cron_expression"].split() == ["0", "30", "3", "*", "*", "?"]
    for target, status in (("dev", "PAUSED"), ("prod", "UNPAUSED")):
        jobs = bundle["targets"][target]["resources"]["jobs"]
        assert jobs["ometria_maintenance"]["schedule"]["pause_status"] == status


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, scalar value) of a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
    else:
        yield path, node


@pytest.mark.parametrize(
    "path",
    [
        BUNDLE,
        JOB_FILE,
        ROOT / "resources" / "ometria_maintenance.job.yml",
        ROOT / "conf" / "databricks.yaml",
    ],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_no_secret_values(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert DEMO_KEY not in text
    for dotted, value in walk(load(path)):
        last = re.split(r"[.\[]", dotted)[-1]
        if last in SECRET_NAME_KEYS:
            # Names of a secret scope/key or an env var: short identifiers, not key material.
            assert value is None or re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", str(value)), dotted
        elif SECRETISH_KEY.search(last):
            assert value in (None, ""), f"{dotted} holds a literal value"
        if isinstance(value, str):
            opaque = [m for m in SECRETISH_VALUE.findall(value) if "/" not in m]
            assert not opaque, f"{dotted}: looks like a secret: {value!r}"


def test_secret_check_catches_a_key(tmp_path: Path) -> None:
    leaked = tmp_path / "leaked.yaml"
    leaked.write_text(f"api:\n  api_key: {DEMO_KEY}\n", encoding="utf-8")
    with pytest.raises(AssertionError):
        test_no_secret_values(leaked)
