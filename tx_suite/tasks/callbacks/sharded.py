"""Callbacks that run the model on rank 0 only (sample grids, attention maps) cannot do so when
the strategy shards the parameters: every forward pass gathers each layer's shards from all ranks,
so rank 0 alone would wait for the others forever."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn


def shards_parameters(trainer: pl.Trainer) -> bool:
    """True under FSDP or DeepSpeed ZeRO stage 3 with several ranks (parameters split over them)."""
    if getattr(trainer, "world_size", 1) == 1:
        return False  # one rank holds every shard
    strategy = trainer.strategy
    name = type(strategy).__name__
    return "FSDP" in name or ("DeepSpeed" in name and bool(getattr(strategy, "zero_stage_3", False)))


def skip_rank_zero_forward(trainer: pl.Trainer, what: str) -> bool:
    """True, with a warning, when ``what`` (a rank-0-only model call) must be skipped: see the module."""
    if not shards_parameters(trainer):
        return False
    rank_zero_warn(f"{what} not drawn under {type(trainer.strategy).__name__}: a forward pass on rank 0 alone "
                   "would wait for the other ranks' parameter shards; draw them from a checkpoint on one device")
    return True
