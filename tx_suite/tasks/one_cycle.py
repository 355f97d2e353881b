"""torch's one-cycle schedule (Smith and Topin 2019) made safe to resume with more steps and to run
for very few."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR


class ResumableOneCycleLR(OneCycleLR):
    """:class:`torch.optim.lr_scheduler.OneCycleLR` whose shape is always the one built for this run.

    torch's ``load_state_dict`` restores the checkpoint's ``total_steps`` and phases, so a run
    resumed with a larger ``max_steps``/``max_epochs`` fails with "Tried to step N times". This one
    restores only the position (step counters, last rates): a run trained further follows the
    schedule of its new length from the step it reached, as the translation schedules do.
    """

    _SHAPE = ("total_steps", "_schedule_phases", "_anneal_func_type", "cycle_momentum", "use_beta1")

    def load_state_dict(self, state_dict: dict) -> None:
        shape = {k: self.__dict__[k] for k in self._SHAPE if k in self.__dict__}
        super().load_state_dict(state_dict)
        self.__dict__.update(shape)


def one_cycle(optimizer: Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.3) -> ResumableOneCycleLR:
    """A :class:`ResumableOneCycleLR` over ``total_steps`` (at least 1) optimizer steps.

    torch divides by the warm-up length ``pct_start * total_steps - 1``; when that is exactly 0
    (10 steps at ``pct_start=0.1``) the first step raised ZeroDivisionError, so the warm-up is
    then lengthened by half a step.
    """
    total = max(int(total_steps), 1)
    if abs(pct_start * total - 1) < 1e-9:
        pct_start = min(1.0, 1.5 / total)
    return ResumableOneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start)
