"""Lightning's replay of the restored epoch end, when a run with ``max_steps`` resumes.

With ``max_steps`` set (iteration-based training), Lightning 2.6 resumes from a checkpoint written
in ``on_train_epoch_end`` by running that epoch's end once more (``FitLoop.on_advance_end`` after
an empty epoch), and counts two things a second time that the checkpoint already holds:

* ``epoch_progress.processed``: a resumed ``max_epochs=N`` run stops one epoch early, and the
  sampler epoch of every later epoch is one ahead;
* ``_batches_that_stepped`` (the logger's step), incremented by ``TrainingEpochLoop.reset`` as if
  the checkpoint had been written mid-batch: every later metric is logged one step late.

The two functions below take those counts back; :class:`RunCheckpoint` calls them. Each checks the
state it expects first and does nothing otherwise (other restarts, other Lightning versions).
Lightning-AI/pytorch-lightning#19617 reports a bug of the same family.
"""

from __future__ import annotations

import pytorch_lightning as pl


def replays_epoch_end(trainer: pl.Trainer) -> bool:
    """True when this fit resumed from an epoch-end checkpoint that Lightning will replay."""
    loop = trainer.fit_loop
    return trainer.max_steps != -1 and bool(getattr(loop, "restarted_on_epoch_end", False))


def undo_epoch_count(trainer: pl.Trainer) -> bool:
    """Call in ``on_train_start``: take back the ``processed`` epoch the replay will add again.
    Returns whether it did."""
    progress = trainer.fit_loop.epoch_progress
    if not replays_epoch_end(trainer) or progress.total.processed != progress.total.completed + 1:
        return False
    progress.total.processed -= 1
    progress.current.processed -= 1
    return True


def undo_step_count(trainer: pl.Trainer) -> bool:
    """Call in the replayed ``on_train_epoch_end``: take back the logger step that
    ``TrainingEpochLoop.reset`` added. Returns whether it did."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if not hasattr(epoch_loop, "_batches_that_stepped") or epoch_loop._batches_that_stepped != trainer.global_step + 1:
        return False
    epoch_loop._batches_that_stepped -= 1
    return True
