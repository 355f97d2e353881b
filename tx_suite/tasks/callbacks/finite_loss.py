"""Stop training at the first non-finite loss, before it reaches the weights or a checkpoint."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the global step and batch index."""


class StopOnNonFiniteLoss(pl.Callback):
    """Raise :class:`NonFiniteLossError` as soon as the training loss is NaN or infinite.

    The check runs in ``on_before_backward``, i.e. before the gradients and the optimizer step, so
    the weights stay those of the last good step, and raising (rather than ``trainer.should_stop``)
    skips the end-of-training checkpoint: ``last.ckpt``/``best.ckpt`` keep the last good state.
    A second check on the step output covers tasks whose loss never goes through ``backward``.
    Under DDP/FSDP the ranks reduce the check (any rank's non-finite loss stops all of them at the
    same step), which costs one small all-reduce per check.
    """

    def __init__(self) -> None:
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _check(self, trainer: pl.Trainer, loss: Any) -> None:
        local = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all())
        # All ranks decide together: a rank that raised alone would leave the others in the next
        # gradient all-reduce (gloo on CPU: "Connection closed by peer" became the run's error;
        # NCCL is expected to wait for its timeout, not tried). Single-process strategies return
        # `local` unchanged.
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        if local:
            value = str(loss.detach().float().flatten()[0].item()) if loss.numel() else "nan"
        else:
            value = "on another rank"
        ckpt_cb = trainer.checkpoint_callback
        last = getattr(ckpt_cb, "last_model_path", "") or getattr(ckpt_cb, "best_model_path", "")
        kept = f"; last good checkpoint kept: {last}" if last else "; no checkpoint had been saved yet"
        raise NonFiniteLossError(
            f"non-finite training loss ({value}) at global step {trainer.global_step}, "
            f"epoch {trainer.current_epoch}, batch {self._batch_idx}{kept}"
        )

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._check(trainer, loss)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._check(trainer, loss)
