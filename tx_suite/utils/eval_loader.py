"""Evaluation data loaders that draw nothing from torch's global random generator."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def eval_loader(dataset: Dataset, **kwargs: Any) -> DataLoader:
    """``DataLoader(dataset, **kwargs)`` for validation, test and predict, with a generator of its own.

    Every ``iter()`` of a ``DataLoader`` without a ``generator`` draws its workers' base seed from
    torch's global generator, so each validation shifted the dropout masks and shuffles of every
    training step after it: two runs that differed only in how often they validate
    (``check_val_every_n_epoch``) parted at the first validation. An evaluation loader does not
    shuffle, so its own generator only seeds its workers (the same at every pass; evaluation
    transforms are deterministic).
    """
    kwargs.setdefault("generator", torch.Generator())
    return DataLoader(dataset, **kwargs)
