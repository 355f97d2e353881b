"""The checkpoint callback of every run: Lightning's ModelCheckpoint with an always-current last.ckpt."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every save point, improved or not.

    Lightning 2.6 rewrites ``last.ckpt`` at the end of an epoch only if a top-k checkpoint was
    written at the same step. With ``save_top_k=1`` an epoch that does not improve the monitored
    metric would leave ``last.ckpt`` at the best epoch, and ``--ckpt_path last`` would silently
    resume from an older state. Here the top-k decision is unchanged (``best.ckpt``), and
    ``last.ckpt`` follows every save point (end of validation or epoch, ``every_n_train_steps``).

    The state key is ModelCheckpoint's, so checkpoints written before (or by a plain
    ModelCheckpoint) restore this callback's state.
    """

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            # ModelCheckpoint saves last.ckpt only when this equals the current step.
            self._last_global_step_saved = trainer.global_step

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
