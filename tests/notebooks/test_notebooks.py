"""Notebooks are executed so they never rot (small settings via TX_SUITE_NOTEBOOK_SMALL=1)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TX_SUITE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_committed_notebooks_are_what_build_py_writes(tmp_path):
    """Edit notebooks/_build.py, then run it: a hand-edited .ipynb would be overwritten."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_build", NOTEBOOKS[0].parent / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for name, cells in build.NOTEBOOKS.items():
        build.build(name, cells, out=tmp_path)
        assert (tmp_path / name).read_text() == (NOTEBOOKS[0].parent / name).read_text(), f"run notebooks/_build.py ({name})"
