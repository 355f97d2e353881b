"""A small but real task for the CLI tests: an MLP digit classifier on a slice of bundled MNIST.

Reads the official IDX files (``data/MNIST/raw/t10k-*``) with gzip + numpy after checking their
SHA-256 sums. Used through configs as ``cli_fixtures.TinyMNISTClassifier`` /
``cli_fixtures.TinyMNISTDataModule`` (tests/conftest.py puts tests/ on ``sys.path``).
"""

from __future__ import annotations

import gzip
import importlib
import os
import signal
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tx_suite.data.checksums import verify
from tx_suite.utils.resumable_loader import ResumableDataLoader

REPO = Path(__file__).resolve().parents[1]
IMAGES = "MNIST/raw/t10k-images-idx3-ubyte.gz"
LABELS = "MNIST/raw/t10k-labels-idx1-ubyte.gz"


def read_idx(path: Path) -> np.ndarray:
    """Decode a gzipped IDX file (magic: 0x0000, dtype code 0x08 = ubyte, ndim; then big-endian dims)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


class TinyMNISTDataModule(pl.LightningDataModule):
    """Train/val/test slices of the MNIST test set (images scaled to [0, 1], flattened to 784)."""

    def __init__(self, data_dir: str = str(REPO / "data"), n_train: int = 512, n_val: int = 256,
                 n_test: int = 256, batch_size: int = 64, shuffle: bool = True, resumable: bool = False) -> None:
        super().__init__()
        # Check the files now so a bad path is a config error, not a failure mid-run.
        self.images_path = verify(data_dir, IMAGES)
        self.labels_path = verify(data_dir, LABELS)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size, self.shuffle, self.resumable = batch_size, shuffle, resumable

    def setup(self, stage: str) -> None:
        n = self.n_train + self.n_val + self.n_test
        x = torch.from_numpy(read_idx(self.images_path)[:n].reshape(n, -1).astype(np.float32) / 255.0)
        y = torch.from_numpy(read_idx(self.labels_path)[:n].astype(np.int64))
        a, b = self.n_train, self.n_train + self.n_val
        self.train_set = TensorDataset(x[:a], y[:a])
        self.val_set = TensorDataset(x[a:b], y[a:b])
        self.test_set = TensorDataset(x[b:], y[b:])

    def train_dataloader(self) -> DataLoader:
        if self.resumable:  # exact mid-epoch resume, same order on 1 or N DDP ranks
            return ResumableDataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.test_set.tensors[0]), batch_size=256)


class TinyMNISTClassifier(pl.LightningModule):
    """784 -> hidden -> 10 MLP trained with Adam; ``nan_at_step >= 0`` poisons that step's loss
    (on global rank ``nan_rank`` only when it is >= 0, as one GPU's overflow would)."""

    def __init__(self, hidden: int = 32, lr: float = 3e-3, dropout: float = 0.1, nan_at_step: int = -1,
                 nan_rank: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.global_step == self.hparams.nan_at_step and self.hparams.nan_rank in (-1, self.global_rank):
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def _eval(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y))
        self.log(f"{stage}/acc", (logits.argmax(-1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(-1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class KillAtStep(pl.Callback):
    """SIGKILLs its own process right after training step ``step`` (crash-recovery tests).

    Runs before ModelCheckpoint's hook of the same step (Lightning calls checkpoint callbacks
    last), so the step's own checkpoint, if any, is never written.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(pl.Callback):
    """Sends its own process ``signum`` (default SIGTERM) right after training step ``step``."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class LogImageTable(pl.Callback):
    """Logs a W&B table with one image after each validation (as the vision and translation
    reports do), through every ``WandbLogger`` of the trainer."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        from pytorch_lightning.loggers import WandbLogger

        if trainer.sanity_checking:
            return
        import wandb

        image = wandb.Image(np.full((8, 8), 200, dtype=np.uint8))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("val/table", columns=["image", "n"], data=[[image, 1]], step=trainer.global_step)


def build(spec: dict):
    """Instantiate a config's ``{"class_path": ..., "init_args": {...}}`` entry."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
