"""notebooks/explore_ometria.ipynb runs top to bottom, headless, on a small demo warehouse.

The demo fills the warehouse with this test session's Spark; the notebook runs in its own
kernel (this venv's Python, pinned by a kernelspec written to tmp_path), which starts its own
Spark JVM and reads the Delta folders the demo wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbconvert.preprocessors import ExecutePreprocessor
from pyspark.sql import SparkSession

from ometria_spark import demo
from tests.test_job import FAST_JVM

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explore_ometria.ipynb"
KERNEL = "ometria-spark-test"
WHICH_PYTHON = "import sys; print(sys.executable)"


def test_notebook_is_saved_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell: parameters"
    assert 'os.environ.get("OMETRIA_WAREHOUSE", "../warehouse/ometria")' in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def _kernel_manager(kernels_dir: Path, env: dict[str, str]) -> KernelManager:
    """A kernel that runs exactly this interpreter (the venv's), with ``env`` added."""
    spec_dir = kernels_dir / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ometria-spark tests",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


@pytest.mark.slow
def test_notebook_executes_on_demo_warehouse(spark: SparkSession, tmp_path: Path) -> None:
    # The demo reuses this session (the `spark` fixture); it registers its tables as
    # ometria_demo.T in the session catalog, dropped again below.
    status = demo.main(
        [
            "--profiles",
            "100",
            "--dir",
            str(tmp_path / "data"),
            "--warehouse",
            str(tmp_path / "warehouse"),
        ]
    )
    spark.sql("DROP SCHEMA IF EXISTS ometria_demo CASCADE")
    assert status == 0
    warehouse = tmp_path / "warehouse" / "ometria"
    assert (warehouse / "email_events" / "_delta_log").is_dir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WHICH_PYTHON))
    km = _kernel_manager(
        tmp_path / "kernels",
        {
            "OMETRIA_WAREHOUSE": str(warehouse),
            "OMETRIA_SPARK_MASTER": "local[2]",
            # As test_job's short-lived JVMs: C1-only JIT, the serial collector (not
            # --driver-java-options, which would replace the session's class archive option).
            "JAVA_TOOL_OPTIONS": FAST_JVM,
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        },
    )
    executor = ExecutePreprocessor(timeout=300, kernel_name=KERNEL, allow_errors=False)
    try:
        executor.preprocess(nb, {"metadata": {"path": str(NOTEBOOK.parent)}}, km=km)
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, f"{len(images)} charts"
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert Path(printed.strip()).resolve() == Path(sys.executable).resolve()
