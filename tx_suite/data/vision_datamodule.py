"""Shared LightningDataModule for image classification (MNIST, CIFAR-10/100).

Subclasses say where the images come from (:meth:`_dataset`) and the dataset constants
(classes, channels, native size, normalisation); this class holds the seeded train/val split,
the transforms and the loaders.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tx_suite.data.checksums import resolve_data_dir  # noqa: F401 (re-exported)
from tx_suite.data.vision_transforms import build_eval_transform, build_train_transform, check_augment
from tx_suite.utils.eval_loader import eval_loader
from tx_suite.utils.resumable_loader import ResumableDataLoader


class ImageClassificationDataModule(pl.LightningDataModule):
    """Train / val / test loaders of ``(image, label)`` batches: ``(B, C, H, W)`` float, ``(B,)`` long.

    The validation set is ``val_size`` images held out from the official training set by a
    permutation seeded with ``seed`` (the same split on every machine and run); it uses the eval
    transform. The official test set is the test split. ``predict`` uses the test split too.

    Args:
        data_dir: folder of the datasets (``data/`` of the repository by default).
        batch_size: training batch size; ``eval_batch_size`` (default ``2 * batch_size``) for the rest.
        num_workers: DataLoader worker processes (0 = load in the main process; on a 2-core
            machine that is the fastest, workers would compete with the matmuls).
        val_size: number of training images held out for validation (0 = no validation loop).
        seed: seed of the train/val split permutation.
        augment: train-time augmentation, see :mod:`tx_suite.data.vision_transforms`.
        img_size: model input side in pixels; images are resized to it if it differs from the
            native size (default: native).
        limit_train: use only the first N images of the training split (quick runs and tests).

    Raises:
        ValueError: ``val_size`` is negative or not smaller than the training set; ``limit_train``,
            ``batch_size``, ``eval_batch_size`` or ``img_size`` below 1; ``num_workers`` below 0;
            bad ``augment``;
            (``setup("fit")``) fewer training images (after ``limit_train``) than ``batch_size``.
    """

    #: class names, index = label
    classes: list[str] = []
    in_chans: int = 3
    native_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        augment: dict | None = None,
        img_size: int | None = None,
        limit_train: int | None = None,
    ) -> None:
        super().__init__()
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        # None means the default; 0 used to mean it too (`or`), and negatives failed late.
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("img_size", img_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if limit_train is not None and limit_train < 1:  # 0 meant "all", -5 "all but the last 5"
            raise ValueError(f"limit_train must be >= 1 (or null for the whole split), got {limit_train}")
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else 2 * batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.augment = check_augment(augment)
        self.img_size = img_size if img_size is not None else self.native_size
        self.limit_train = limit_train
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _dataset(self, train: bool, transform) -> Dataset:
        """The official train or test split with ``transform`` applied to each PIL image."""
        raise NotImplementedError

    def train_transform(self):
        return build_train_transform(
            self.img_size, self.mean, self.std, self.augment, resize=self.img_size != self.native_size
        )

    def eval_transform(self):
        return build_eval_transform(self.img_size, self.mean, self.std, resize=self.img_size != self.native_size)

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train indices, val indices) of a training set of ``n`` images; seeded, disjoint."""
        if self.val_size >= n:
            raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({n} images)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        train_idx, val_idx = perm[self.val_size :], perm[: self.val_size]
        # sorted: the split is a set, and sorted indices read the source arrays in order
        return train_idx.sort().values, val_idx.sort().values

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            augmented = self._dataset(True, self.train_transform())
            train_idx, val_idx = self.split_indices(len(augmented))
            if self.limit_train:
                train_idx = train_idx[: self.limit_train]
            self.train_set = Subset(augmented, train_idx.tolist())
            self.val_set = Subset(self._dataset(True, self.eval_transform()), val_idx.tolist())
        if stage == "fit":
            self._check_train_batches()
            if self.val_size == 0 and self.trainer is not None:
                # No validation split: turn the loop (and its sanity check) off, so Lightning does
                # not warn about an empty loader list. teardown() gives the trainer its value back.
                self._limit_val_batches = self.trainer.limit_val_batches
                self.trainer.limit_val_batches = 0
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(False, self.eval_transform())

    def teardown(self, stage: str | None = None) -> None:
        if stage == "fit" and self.trainer is not None and hasattr(self, "_limit_val_batches"):
            self.trainer.limit_val_batches = self._limit_val_batches
            del self._limit_val_batches

    def _check_train_batches(self) -> None:
        """Raise ValueError if the training set fills no ``batch_size`` batch (per process under DDP).

        The training loader drops its incomplete last batch, so Lightning would end such a fit at
        once ("No training batches"), with exit status 0 and no checkpoint.
        """
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        n = len(self.train_set)
        if n // world >= self.batch_size:
            return
        source = f"data.limit_train={self.limit_train} leaves" if self.limit_train else "the training split has"
        ranks = f" on each of {world} processes" if world > 1 else ""
        raise ValueError(f"{source} {n} training images, fewer than data.batch_size={self.batch_size}{ranks}: "
                         "the incomplete last batch is dropped, so there would be no training step; "
                         "raise data.limit_train or lower data.batch_size")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # The (shuffled) training loader resumes mid-epoch where a checkpoint left it, and orders
        # data by seed + epoch, the same on 1 or N processes.
        loader_cls = ResumableDataLoader if shuffle else eval_loader
        return loader_cls(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # equal training batches: every step has the same loss scale
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_size == 0:
            return []
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def metadata(self) -> dict:
        """What inference needs besides the weights (stored in checkpoints by the task)."""
        return {
            "classes": list(self.classes),
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
