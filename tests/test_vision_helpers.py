"""Shared helpers of the vision tests (no tests here; named test_* to sit in the vision test area)."""

from __future__ import annotations

import pytorch_lightning as pl
from tx_suite.data.mnist import MNISTDataModule
from tx_suite.tasks.classification import ImageClassification

#: a ViT small enough to train some steps in seconds on a CPU core
TINY = dict(img_size=28, in_chans=1, num_classes=10, patch_size=7, d_model=64, n_layers=2, n_heads=4, d_ff=128)


def tiny_task(backbone: str = "timm", **kw) -> ImageClassification:
    args = dict(TINY, backbone=backbone, drop_path=0.0, lr=2e-3, warmup_epochs=0.05, weight_decay=0.01,
                label_smoothing=0.0)
    args.update(kw)
    return ImageClassification(**args)


def trainer(tmp_path, steps: int, **kw) -> pl.Trainer:
    args = dict(
        max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    args.update(kw)
    return pl.Trainer(**args)


def mnist(batch_size: int = 64, limit_train: int | None = None, **kw) -> MNISTDataModule:
    return MNISTDataModule(batch_size=batch_size, val_size=1000, limit_train=limit_train, **kw)
