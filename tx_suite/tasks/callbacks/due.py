"""When a callback (or task) that reports every n-th validation epoch reports."""

from __future__ import annotations

import pytorch_lightning as pl


def validation_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True for the validation runs that report: every one outside ``fit`` (``tx-suite validate``
    asks for it now), none in the sanity check, and in ``fit`` every ``every_n_epochs``-th epoch
    and the last validation of the fit: in the epoch that reaches ``max_epochs`` or ``max_steps``,
    or the one Lightning runs when the fit is told to stop (``max_time``, early stopping: the
    trainer's ``should_stop``, once ``min_epochs`` / ``min_steps`` allow it). ``max_steps``
    reached between validation points gets no validation from Lightning at all."""
    if trainer.state.fn != "fit":
        return True
    if trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch + 1
    # max_epochs is -1 when only max_steps bounds the fit
    last = (trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch) or (
        trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step)
    # Lightning's Timer sets should_stop mid-epoch and the epoch loop then validates once more
    # (training_epoch_loop._should_check_val_fx); below min_epochs the fit goes on regardless.
    return (epoch % max(1, every_n_epochs) == 0 or last
            or (trainer.should_stop and getattr(trainer.fit_loop, "_can_stop_early", True)))


def step_suffix(trainer: pl.Trainer) -> str:
    """``"_step000120"`` (the global step) for the file names of a fit that can validate more than
    once per training epoch (``val_check_interval`` shorter than the epoch, a time interval, or
    step-based validation, ``check_val_every_n_epoch: null``, where a stop mid-epoch by ``max_time``
    or early stopping adds a validation to the epoch's scheduled one), where names by epoch alone
    would overwrite each other; ``""`` otherwise, so that the usual one validation per epoch keeps
    its short names."""
    if trainer.state.fn != "fit":
        return ""
    every = getattr(trainer, "val_check_batch", None)  # None before the fit sets it up
    timed = getattr(trainer, "_val_check_time_interval", None) is not None  # Lightning >= 2.6
    by_steps = getattr(trainer, "check_val_every_n_epoch", 1) is None
    several = timed or by_steps or (every is not None and every < trainer.num_training_batches)
    return f"_step{trainer.global_step:06d}" if several else ""
