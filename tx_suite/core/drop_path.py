"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth", §3)."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Drops a whole residual branch per sample with probability ``p`` during training.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged (the inverted form
    used by timm and the ViT/DeiT recipes). Identity in eval mode or when ``p == 0``.

    Shapes: ``(B, ...) -> (B, ...)``.

    Raises:
        ValueError: ``p`` outside [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.size(0),) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
