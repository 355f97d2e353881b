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
    # execute() raises CellExecutionError at the first cell that fails
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


def test_attention_notebook_reads_a_hybrid_vits_patch_grid(tmp_path, monkeypatch):
    """With a hybrid checkpoint (patch_size 1 on the conv stem's 7 x 7 map) the notebook took the
    grid as 28 // patch_size = 28 x 28 and failed reshaping the 49 CLS weights."""
    from tx_suite.cli.main import main

    runs = tmp_path / "runs"
    assert main(["fit", "--config", "experiments/vision/mnist_vit_hybrid.yaml", "--runs_dir", str(runs),
                 "--model.init_args.d_model=32", "--model.init_args.d_ff=64", "--model.init_args.n_layers=1",
                 "--model.init_args.compile=false", "--model.init_args.ema_decay=null",
                 "--data.init_args.limit_train=256", "--data.init_args.val_size=64", "--trainer.max_steps=2",
                 "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]) == 0
    ckpt = next(runs.glob("mnist_vit_hybrid/*/checkpoints/last.ckpt"))
    monkeypatch.setenv("TX_SUITE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TX_SUITE_VIT_CKPT", str(ckpt))
    path = NOTEBOOKS[0].parent / "02_attention_maps.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


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
