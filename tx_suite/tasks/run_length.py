"""How many optimizer steps a fit will take, for the schedules that need to know."""

from __future__ import annotations

import math

import pytorch_lightning as pl


def total_training_steps(trainer: pl.Trainer, schedule: str) -> int:
    """The fit's optimizer steps (Lightning's ``estimated_stepping_batches``), for ``schedule``
    (named in the error), which decays over the whole run.

    Raises:
        ValueError: the run has no length: ``trainer.max_epochs`` is -1 (or null without
            ``max_steps``), so only ``max_time`` or a callback would stop it, and Lightning's
            estimate is infinite (``int()`` of it raised a bare OverflowError).
    """
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(f"the {schedule} learning-rate schedule decays over the whole run, but this run has no "
                         "length (trainer.max_epochs -1 and no trainer.max_steps; max_time alone does not say "
                         "how many steps fit): set trainer.max_steps or trainer.max_epochs")
    return int(total)
