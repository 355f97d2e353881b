"""Learning-rate schedules with linear warm-up, stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR

SCHEDULES = ("inverse_sqrt", "cosine", "constant")


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Vaswani et al. 2017, §5.3, Eq. 3: ``lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``,
    i.e. a linear rise for ``warmup_steps`` steps, then decay proportional to ``step^-0.5``. Written,
    as in fairseq's ``inverse_sqrt``, relative to the peak reached at ``step = warmup_steps``:
    ``min(step / warmup, sqrt(warmup / step))``. ``warmup_steps <= 0`` means no warm-up, as for
    the other schedules: the first update is at the peak and the decay starts from there (as 1).
    """
    s = step + 1  # the first update should not use lr = 0
    warmup = max(1, warmup_steps)  # without warm-up, the peak is the first step; it still decays
    return min(s / warmup, math.sqrt(warmup / s))


def build_scheduler(optimizer: Optimizer, name: str, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0) -> LRScheduler:
    """A per-step schedule for ``optimizer`` (whose ``lr`` is the peak rate).

    Args:
        name: ``inverse_sqrt`` (:func:`inverse_sqrt_factor`), ``cosine`` (linear warm-up, then
            cosine decay to ``min_lr_ratio * lr`` at ``total_steps``; Loshchilov & Hutter 2017,
            torch's ``CosineAnnealingLR``), or ``constant`` (linear warm-up, then flat).
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
        base_lr = optimizer.param_groups[0]["lr"]
        warm = max(1, warmup_steps)
        return SequentialLR(optimizer, [
            LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm),
            CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warm), eta_min=base_lr * min_lr_ratio),
        ], milestones=[warm])
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


__all__ = ["SCHEDULES", "build_scheduler", "inverse_sqrt_factor"]
