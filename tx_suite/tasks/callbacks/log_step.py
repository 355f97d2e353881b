"""The step at which Lightning logs the metrics of the current hook, for media logged beside them."""

from __future__ import annotations

import pytorch_lightning as pl


def metrics_log_step(trainer: pl.Trainer) -> int:
    """The ``step`` Lightning passes to the loggers for metrics logged now.

    Lightning logs with ``fit_loop.epoch_loop._batches_that_stepped``, which a validation inside
    ``fit`` reads before the batch's increment: one less than ``trainer.global_step`` there. W&B
    tables and images logged at ``global_step`` landed one step after the validation metrics they
    belong to. Falls back to ``global_step`` where the attribute is missing (another Lightning).
    """
    step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else trainer.global_step
