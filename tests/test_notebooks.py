"""The notebooks run top to bottom offline, each in under 2 minutes (nbclient, with the Jupyter
kernel of this interpreter), results.ipynb on the tiny run; they are committed without outputs."""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
LIMIT_S = 120


def execute(name: str) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook in its folder (as nbmake does); returns it with its outputs and the time."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=LIMIT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", ["residuals.ipynb", "results.ipynb"])
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_residuals_notebook():
    nb, seconds = execute("residuals.ipynb")
    print(f"residuals.ipynb: {seconds:.1f} s")
    assert seconds < LIMIT_S
    assert images(nb) == 3  # two clip grids, the per-frame plots
    text = "".join(
        str(o.get("data", {}).get("text/markdown", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    assert "astronaut" in text and "synthetic" in text  # the size table


def test_results_notebook(tiny_run, monkeypatch):
    monkeypatch.setenv("MIC_RUN", str(tiny_run))
    nb, seconds = execute("results.ipynb")
    print(f"results.ipynb: {seconds:.1f} s")
    assert seconds < LIMIT_S
    # curves, confusion matrices, MI / identity probe (+ misclassified clips, if any)
    assert images(nb) >= 3
