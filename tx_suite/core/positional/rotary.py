"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", §3.4, Eq. 34)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotates query/key feature pairs by position-dependent angles ``m * theta_i``.

    ``theta_i = base^(-2i / Dh)`` (RoFormer Eq. 15). Pairs are (x_i, x_{i + Dh/2}) ("rotate half",
    as GPT-NeoX and LLaMA implement it), which is a fixed permutation of the paper's adjacent pairs.
    Relative positions then enter the dot product ``q_m . k_n`` only through ``m - n``.

    Args:
        head_dim: per-head dimension ``Dh`` (even).
        base: the wavelength base (10000 in the paper).

    Raises:
        ValueError: ``head_dim`` is odd.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base

    def _inv_freq(self, device: torch.device | None = None) -> Tensor:
        # Computed per call, not held in a buffer: ``model.to(torch.bfloat16)`` would round a
        # buffer's frequencies (up to 0.4 %), and the angle error m * d(theta) grows with position.
        return self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)

    @property
    def inv_freq(self) -> Tensor:
        """The frequencies ``theta_i`` ``(Dh/2,)``, float32."""
        return self._inv_freq()

    def _cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        angles = positions.float()[:, None] * self._inv_freq(positions.device)[None, :]  # (T, Dh/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Rotate the new queries ``q`` ``(B, H, T, Dh)`` and keys ``k`` ``(B, H, T, Dh)``.

        Both hold the same new positions ``offset .. offset + T - 1`` (``offset`` = number of
        positions already in the KV cache); cached keys were rotated when they were new.

        Raises:
            ValueError: ``q`` and ``k`` differ in length, or their last dimension is not ``Dh``
                (one query row would otherwise broadcast one angle over every key).
            IndexError: ``offset`` < 0.
        """
        if q.size(-2) != k.size(-2) or q.size(-1) != self.head_dim or k.size(-1) != self.head_dim:
            raise ValueError(f"RotaryEmbedding: q {tuple(q.shape)} and k {tuple(k.shape)} must hold the same new "
                             f"positions with head dim {self.head_dim}")
        if offset < 0:
            raise IndexError(f"position offset must be >= 0, got {offset}")
        cos, sin = self._cos_sin(torch.arange(offset, offset + q.size(-2), device=q.device), q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
