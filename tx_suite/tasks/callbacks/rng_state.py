"""Save and restore random-number-generator states in checkpoints, for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RNGStateCallback(pl.Callback):
    """Stores the Python, NumPy, torch CPU and CUDA RNG states in every checkpoint and restores them.

    Lightning does not keep RNG states, so without this a run resumed with ``--ckpt_path last``
    draws different shuffles/dropout masks than the uninterrupted run. The states are stored as
    tensors, ints and tuples only, so checkpoints still load with ``torch.load(weights_only=True)``.

    With ``max_steps`` set, Lightning resumes from an epoch-end checkpoint by replaying that
    epoch's end, and the replay opens a train-loader iterator (one draw from torch's RNG) that the
    uninterrupted run never made. The restored states are therefore applied once more at the end
    of that replay.
    """

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None
        self._restored_at_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict
        self._apply(state_dict)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restored_at_step = trainer.global_step if self._restored is not None else None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch end with no step since the restore is Lightning's replay of the restored one.
        if self._restored is not None and trainer.global_step == self._restored_at_step:
            self._apply(self._restored)
        self._restored = None

    @staticmethod
    def _apply(state_dict: dict[str, Any]) -> None:
        if "python" in state_dict:
            version, internal, gauss = state_dict["python"]
            random.setstate((version, tuple(internal), gauss))
        if "numpy" in state_dict:
            name, keys, *rest = state_dict["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
