"""Dropout (Srivastava et al. 2014, JMLR 15, §2), the regulariser of Vaswani et al. 2017 §5.4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Module):
    """Zeroes each element with probability ``p`` in training and scales the others by
    ``1 / (1 - p)`` (the inverted form, so eval mode is the identity). Drop-in for ``nn.Dropout``.

    On CPU the keep-mask is ``torch.rand(shape) >= p``: ``nn.Dropout``'s ``bernoulli_`` is slow
    there (a fifth of a bf16 translation training step in a profile; the step is ~1.2x faster with
    this mask, ``benchmarks/RESULTS.md``). Elsewhere ``F.dropout``, one fused kernel. The two draw
    different random numbers for the same seed; the distribution is the same.

    Shapes: any ``(*)`` -> ``(*)``.

    Raises:
        ValueError: ``p`` is not in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # float32 draws, also for bf16 x
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
