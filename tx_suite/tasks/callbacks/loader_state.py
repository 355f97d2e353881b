"""Restore a resumable train loader's position when the task's optimizer set-up read the loader early."""

from __future__ import annotations

import pytorch_lightning as pl


class RestoreLoaderState(pl.Callback):
    """Apply a checkpoint's train-loader state that Lightning would drop, then restart the iterator.

    Every task computes its schedule length from ``trainer.estimated_stepping_batches`` in
    ``configure_optimizers``, which builds the train loader *before* the checkpoint is restored.
    Lightning 2.6 then never hands the saved loader state (``fit_loop`` -> ``combined_loader``) to
    the loader, so a mid-epoch resume silently starts the epoch over (Lightning issue #20550; fix
    proposed in PR #21765). At ``on_train_start``, after the restore and before the first batch,
    this does what that fix does: load the pending states and re-create the data iterator.
    It is a no-op when there is nothing pending (a fresh run, an epoch-end checkpoint, a plain
    ``DataLoader``, or a Lightning version that loaded the states itself).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        pending = getattr(loop, "_combined_loader_states_to_load", None)
        fetcher = getattr(loop, "_data_fetcher", None)
        if not pending or not loop.restarting or getattr(loop, "_combined_loader", None) is None or fetcher is None:
            return
        loop._load_combined_loader_states()
        iter(fetcher)  # the loader reads the skip when its iterator is created
