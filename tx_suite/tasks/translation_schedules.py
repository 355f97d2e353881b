"""Learning-rate schedules with linear warm-up, stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

SCHEDULES = ("inverse_sqrt", "cosine", "constant")


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Vaswani et al. 2017, §5.3, Eq. 3: ``lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``,
    i.e. a linear rise for ``warmup_steps`` steps, then decay proportional to ``step^-0.5``. Written,
    as in fairseq's ``inverse_sqrt``, relative to the peak, with ``s = step + 1`` (Eq. 3's
    ``step_num`` counts from 1): ``min(s / warmup, sqrt(warmup / s))``, so ``1 / warmup`` at
    ``step = 0`` and the peak 1.0 at ``step = warmup_steps - 1``. (fairseq's warm-up starts at
    ``--warmup-init-lr`` 1e-7 and uses ``step`` for ``s``, so it peaks one update later.) ``warmup_steps <= 0`` means no warm-up, as for
    the other schedules: the first update is at the peak and the decay starts from there (as 1).
    """
    s = step + 1  # the first update should not use lr = 0
    warmup = max(1, warmup_steps)  # without warm-up, the peak is the first step; it still decays
    return min(s / warmup, math.sqrt(warmup / s))


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): ``1 / warmup`` at
    step 0, rising linearly to 1 at ``step = warmup_steps`` (one step later than
    :func:`inverse_sqrt_factor`'s peak), then a cosine from 1 down to ``min_lr_ratio`` at
    ``total_steps``, flat after it.

    The cosine is SGDR's (Loshchilov & Hutter 2017, Eq. 5) without restarts:
    ``eta_min + (eta_max - eta_min) * (1 + cos(pi * t / T)) / 2`` with ``t = step - warmup``,
    ``T = total_steps - warmup``. The same values as torch's ``SequentialLR(LinearLR,
    CosineAnnealingLR)`` up to rounding, but stateless: a run resumed with a longer ``total_steps``
    follows its new length (torch's schedulers restored their old ``T_max``, and past it their
    periodic cosine climbed back to the peak).
    """
    warm = max(1, warmup_steps)
    if step < warm:
        return 1.0 / warm + (1.0 - 1.0 / warm) * step / warm
    t, period = step - warm, max(1, total_steps - warm)
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * min(t, period) / period)) / 2.0


def build_scheduler(optimizer: Optimizer, name: str, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0) -> LRScheduler:
    """A per-step schedule for ``optimizer`` (whose ``lr`` is the peak rate).

    Args:
        name: ``inverse_sqrt`` (:func:`inverse_sqrt_factor`), ``cosine`` (linear warm-up, then
            cosine decay to ``min_lr_ratio * lr`` at ``total_steps``, :func:`cosine_factor`), or
            ``constant`` (linear warm-up, then flat). All are ``LambdaLR`` of a closed form, so a
            resumed run trained further follows its new length.
        warmup_steps: steps of linear warm-up.
        total_steps: optimizer steps in the whole run (cosine only).
        min_lr_ratio: final rate of the cosine schedule as a fraction of the peak.

    Raises:
        ValueError: unknown ``name``.
    """
    if name == "inverse_sqrt":
        return LambdaLR(optimizer, lambda step: inverse_sqrt_factor(step, warmup_steps))
    if name == "constant":
        return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
    if name == "cosine":
        return LambdaLR(optimizer, lambda step: cosine_factor(step, warmup_steps, total_steps, min_lr_ratio))
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def upgrade_scheduler_state(state: dict) -> dict:
    """A checkpoint's scheduler state as the current schedules load it.

    Cosine checkpoints written before :func:`cosine_factor` hold a torch ``SequentialLR`` state
    (``_schedulers``, ``_milestones``), which ``LambdaLR.load_state_dict`` refuses (``KeyError:
    'lr_lambdas'``). The step count (``last_epoch``) and the last rates are all a closed-form
    schedule needs: the rest is dropped. Other states are returned as they are.
    """
    if "_schedulers" not in state or "lr_lambdas" in state:
        return state
    kept = {k: state[k] for k in ("last_epoch", "_last_lr") if k in state}
    return {**kept, "_step_count": state["last_epoch"] + 1, "lr_lambdas": [None]}


__all__ = ["SCHEDULES", "build_scheduler", "cosine_factor", "inverse_sqrt_factor", "upgrade_scheduler_state"]
