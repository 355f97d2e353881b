"""Fixed sinusoidal positional encoding (Vaswani et al. 2017, §3.5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(n_positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """``(n_positions, d_model)`` table with, for position ``pos`` and ``i < d_model / 2``::

        PE(pos, 2i)   = sin(pos / base^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / base^(2i / d_model))

    (Vaswani et al. 2017, §3.5; ``base`` = 10000). An odd ``d_model`` drops the last cosine.
    fairseq and tensor2tensor lay the same waves out as ``[sin | cos]`` halves with exponent
    ``i / (d_model/2 - 1)`` (fairseq from position ``pad_id + 1``): nearly a permutation of these
    dimensions, not the paper's interleaving.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(base) / d_model))
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Looks up :func:`sinusoidal_table` rows; grows the table on demand (no length limit).

    Args:
        d_model: model width ``D``.
        max_len: rows precomputed at construction.
    """

    def __init__(self, d_model: int, max_len: int = 1024) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions ``offset .. offset + length - 1``: ``(length, D)`` (the table
        grows past ``max_len`` as needed).

        Raises:
            IndexError: ``offset`` < 0.
        """
        if offset < 0:  # Python's negative indexing would wrap around to the table's end
            raise IndexError(f"position offset must be >= 0, got {offset}")
        end = offset + length
        if end > self.table.size(0):
            self.table = sinusoidal_table(max(end, 2 * self.table.size(0)), self.d_model).to(self.table)
        return self.table[offset:end]
