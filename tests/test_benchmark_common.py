"""benchmarks/_common.py helpers that keep the benchmark scripts working on every allowed version."""

import sys
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402


def test_weights_only_is_passed_only_where_lightning_takes_it(monkeypatch):
    """pytorch-lightning 2.5 (allowed by pyproject) has no `weights_only` on Trainer.fit: the
    training scripts passed it anyway and stopped with a TypeError after setting up the data."""
    if tuple(int(x) for x in pl.__version__.split(".")[:2]) >= (2, 6):
        assert _common.safe_fit_kwargs() == {"weights_only": True}

    def fit_25(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None):
        pass

    monkeypatch.setattr(pl.Trainer, "fit", fit_25)
    assert _common.safe_fit_kwargs() == {}
