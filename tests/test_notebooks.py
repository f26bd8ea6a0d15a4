"""Every notebook in demo_notebooks/ runs end to end in a real Jupyter kernel (nbclient).

The notebooks share one demo warehouse (``ldw.demo.prepare``: TPC-H SF0.01 from tpchgen-cli in
SQLite, a private server with Flight on loopback) made once in a temporary folder and passed to
the kernels through ``LDW_DEMO_DIR``, and as ``LDW_CONFIG`` for notebooks that just call
``ldw.connect()``: no notebook may reach the user's default server. The server is stopped at
the end. Notebooks are committed without outputs, which a test checks too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nbclient
import nbformat
import pytest

from ldw import demo

NOTEBOOKS = sorted((Path(__file__).parent.parent / "demo_notebooks").glob("*.ipynb"))
SCALE = "0.01"
CELL_TIMEOUT = 180  # seconds per cell; a cell here takes a few at most


def test_the_demo_notebooks_are_there() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert names >= {"01_quickstart.ipynb", "02_sql_over_the_cache.ipynb",
                     "03_iterative_ml.ipynb", "04_sharing.ipynb",
                     "05_export_to_production.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: clear the outputs before committing "
                "(jupyter nbconvert --clear-output --inplace)")


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The warehouse the notebooks find through LDW_DEMO_DIR, made before the first kernel."""
    folder = tmp_path_factory.mktemp("notebooks")
    config = demo.prepare(folder, scale=float(SCALE), flight=True, governance=True)
    try:
        yield config
    finally:
        demo.stop_server(config)
        assert demo.server_pid(config) is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, demo_config: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    env.update(LDW_DEMO_DIR=str(demo_config.parent), LDW_DEMO_SCALE=SCALE,
               LDW_CONFIG=str(demo_config),
               # the kernel spec runs `python`: make it this interpreter (the venv's)
               PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]))
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert errors == []
    assert all(cell.execution_count for cell in notebook.cells if cell.cell_type == "code")
