"""Epoch-level training tallies (running accuracy, code histograms) that survive a mid-epoch resume.

A metric such as ``train/acc`` or ``train/codebook_usage`` is computed over a whole training epoch.
A run killed mid-epoch and resumed from its ``last.ckpt`` restarts that epoch's loop at the saved
batch; without its tallies in the checkpoint the epoch's metric would count only the batches after
the resume. A task saves them with :func:`pack` in ``on_save_checkpoint`` and puts them back with
:func:`unpack` in ``on_train_start``: only into the epoch and step they were taken at (an
epoch-end checkpoint resumes in the next epoch, which starts with no tallies). Under DDP each rank
holds its own tallies; they are not saved, and a resumed epoch starts afresh.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import Tensor


def mid_epoch(trainer: pl.Trainer) -> bool:
    """True while some of this epoch's training batches are still to come."""
    # state.fn, not trainer.training: a checkpoint written at a mid-epoch validation
    # (val_check_interval) is saved while the trainer is validating.
    processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return trainer.state.fn == "fit" and processed < trainer.num_training_batches


def pack(trainer: pl.Trainer | None, state: dict[str, Tensor]) -> dict[str, Any] | None:
    """The checkpoint entry for ``state`` (CPU copies), or None where none should be saved
    (no trainer, several processes, or the epoch's batches are all done)."""
    if trainer is None or trainer.world_size != 1 or not mid_epoch(trainer):
        return None
    return {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "state": {k: v.detach().cpu().clone() for k, v in state.items()}}


def unpack(saved: Any, trainer: pl.Trainer) -> dict[str, Tensor] | None:
    """The saved tallies if they belong to the epoch and step this fit resumes at, else None."""
    if (isinstance(saved, dict) and trainer.world_size == 1 and saved.get("epoch") == trainer.current_epoch
            and saved.get("global_step") == trainer.global_step and isinstance(saved.get("state"), dict)):
        return saved["state"]
    return None
