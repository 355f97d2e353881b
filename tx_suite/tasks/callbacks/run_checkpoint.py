"""The checkpoint callback of every run: Lightning's ModelCheckpoint with an always-current last.ckpt."""

from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from tx_suite.tasks.callbacks import epoch_end_replay


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every save point, improved or not,
    and optionally every N training steps within an epoch.

    Lightning 2.6 rewrites ``last.ckpt`` at the end of an epoch only if a top-k checkpoint was
    written at the same step. With ``save_top_k=1`` an epoch that does not improve the monitored
    metric would leave ``last.ckpt`` at the best epoch, and ``--ckpt_path last`` would silently
    resume from an older state. Here the top-k decision is unchanged (``best.ckpt``), and
    ``last.ckpt`` follows every save point.

    Args:
        last_every_n_train_steps: also write ``last.ckpt`` (only it) every this many optimizer
            steps, for crash recovery mid-epoch (``--checkpoint.last_every_n_train_steps=500``).
            Unlike ``every_n_train_steps`` it leaves the choice of ``best.ckpt`` to the end of
            each epoch, when the monitored validation metric is fresh. A due step that is the last
            batch of an epoch is left to the epoch end (below). Exact mid-epoch
            resumption also needs a resumable train loader
            (:class:`tx_suite.utils.resumable_loader.ResumableDataLoader`).
        **kwargs: the arguments of :class:`~pytorch_lightning.callbacks.ModelCheckpoint`.

    Raises:
        ValueError: ``last_every_n_train_steps`` below 1; ``save_top_k`` other than 0 or 1 with a
            fixed ``filename`` (no ``{...}`` field, as the CLI's ``best``): the k files would share
            one path, each save overwrote the last, and ``best.ckpt`` ended as the newest epoch.

    ``last.ckpt`` is also written at every training epoch end that came without a save point
    (``val_check_interval`` that does not divide the epoch, ``check_val_every_n_epoch`` > 1,
    ``every_n_epochs`` > 1, whose cadence then applies to ``best.ckpt`` only, a ``max_steps`` stop
    between validations), so a fit always ends with ``last.ckpt`` at its final step: Lightning writes it at the end of a fit only if none was written before, and such a fit
    ended with a ``last.ckpt`` some steps old, which ``--ckpt_path last`` then tested or resumed.
    It is written in ``on_train_epoch_end``, before Lightning counts the epoch as done, so a
    resume from a ``max_steps`` stop continues that epoch. (These extra writes are for
    ``save_last=True``; ``save_last="link"`` keeps Lightning's behaviour.)

    An epoch whose metrics lack the monitored key (a metric computed only every N epochs, such as
    ``TranslationTask(bleu_every_n_epochs=N)``'s ``val/bleu``) keeps ``best.ckpt`` as it is and
    still rewrites ``last.ckpt``; ModelCheckpoint would raise instead. A run with no validation
    batches at all (``val_size=0``, ``limit_val_batches=0``) can never log it: there ``best.ckpt``
    is the latest epoch, as with ``monitor=None`` (with ``save_top_k`` > 1, only the latest file
    is kept), and one warning says so, because without a ``best.ckpt`` ``--ckpt_path best`` would
    resolve to an older run of the experiment. A run resumed without validation after earlier
    epochs were ranked keeps their ``best.ckpt``.

    Resuming from an epoch-end checkpoint with ``max_steps`` set (iteration-based training),
    Lightning 2.6 replays that epoch's end. The replay is not a new save point (nothing trained
    since the restore, no validation metrics), so nothing is written or warned about then; the
    epoch and logger-step counts the replay adds twice are taken back
    (:mod:`tx_suite.tasks.callbacks.epoch_end_replay`).

    The state key is ModelCheckpoint's, so checkpoints written before (or by a plain
    ModelCheckpoint) restore this callback's state.
    """

    def __init__(self, *args: Any, last_every_n_train_steps: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_top_k not in (0, 1) and self.filename is not None and "{" not in self.filename:
            raise ValueError(f"checkpoint.save_top_k {self.save_top_k} with the fixed filename {self.filename!r}: "
                             "every kept checkpoint would be that one file (the newest epoch, not the best); "
                             "use save_top_k 1, or a filename with fields such as '{epoch}-{step}'")
        if last_every_n_train_steps is not None and last_every_n_train_steps < 1:
            raise ValueError(f"last_every_n_train_steps must be >= 1 or None, got {last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps
        self._warned_missing = False
        self._replay_at_step: Optional[int] = None
        self._last_step_written: Optional[int] = None  # global_step of the newest last.ckpt

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.monitor is None or self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        elif self.save_top_k and _runs_no_validation(trainer) and self.best_model_score is None:
            # Nothing will ever log the key. Without a best.ckpt, `--ckpt_path best` would quietly
            # pick an older run of the experiment, so the latest epoch stands in, as with monitor=None.
            # (A run resumed without validation after it had ranked epochs keeps its best.ckpt.)
            if not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(f"RunCheckpoint(monitor={self.monitor!r}): this run has no validation batches "
                               "(val_size 0, limit_val_batches 0 or no val loader), so best.ckpt is the latest "
                               "epoch, as with checkpoint.monitor: null")
            previous = self.best_model_path
            self._save_none_monitor_checkpoint(trainer, monitor_candidates)
            # Lightning removes the previous file only for save_top_k 1 (monitor=None refuses other
            # k); unranked epochs are not a top k, so only the latest is kept unless k is -1 (all).
            if (self.save_top_k > 1 and previous and previous != self.best_model_path
                    and self._should_remove_checkpoint(trainer, previous, self.best_model_path)):
                self._remove_checkpoint(trainer, previous)
        elif not self._warned_missing:
            self._warned_missing = True
            rank_zero_warn(f"RunCheckpoint(monitor={self.monitor!r}): the key is missing at step "
                           f"{trainer.global_step}; best.ckpt is chosen only at steps that log it "
                           f"(logged now: {sorted(monitor_candidates)})")
        if self.save_last:
            # ModelCheckpoint saves last.ckpt only when this equals the current step.
            self._last_global_step_saved = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._replay_at_step = None
        if trainer.ckpt_path is not None:
            # The restored checkpoint was written at this step: Lightning's replay of its epoch end
            # must not count as a new save point.
            self._last_global_step_saved = trainer.global_step
            self._last_step_written = trainer.global_step
            if epoch_end_replay.undo_epoch_count(trainer):
                self._replay_at_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning 2.6 writes last.ckpt here even for fast_dev_run, which documents that it saves
        # none; that 1-step smoke test's last.ckpt would then be what `--ckpt_path last` resumes.
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._replay_at_step is not None and trainer.global_step == self._replay_at_step:
            epoch_end_replay.undo_step_count(trainer)
        self._replay_at_step = None
        super().on_train_epoch_end(trainer, pl_module)
        # An epoch end without a save point (no validation at its last batch, none at the epoch end)
        # still writes last.ckpt: the newest state, and the final one of a fit that stops here.
        if (self.save_last is True and self._last_step_written != trainer.global_step
                and not trainer.fast_dev_run and not trainer.sanity_checking):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n = self.last_every_n_train_steps
        if (
            not n
            or self.save_last is not True
            or trainer.global_step % n != 0
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            # With accumulate_grad_batches the batches after an optimizer step keep its global_step:
            # only the batch that took the step is a whole state (no half-accumulated gradients).
            or self._last_step_written == trainer.global_step
            or self._should_skip_saving_checkpoint(trainer)  # fast_dev_run, or already saved at this step
        ):
            return
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # A mid-epoch last.ckpt must not count as "saved at this step" for the epoch-end top-k save.
        self._last_global_step_saved = saved_step

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_written = trainer.global_step

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


def _runs_no_validation(trainer: pl.Trainer) -> bool:
    """True when this fit can never log a validation metric: validation is off
    (``limit_val_batches=0``, no ``validation_step`` or no val loader), or the val loaders it
    set up hold no batches (an empty list, as a datamodule with ``val_size=0`` returns). A
    loader not yet set up (``check_val_every_n_epoch`` > 1 before its first validation) is not
    taken as none."""
    if not trainer.enable_validation:
        return True
    return trainer.val_dataloaders is not None and sum(trainer.num_val_batches) == 0
