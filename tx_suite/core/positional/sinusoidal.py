"""Fixed sinusoidal positional encoding (Vaswani et al. 2017, §3.5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


LAYOUTS = ("paper", "fairseq")


def sinusoidal_table(n_positions: int, d_model: int, base: float = 10000.0, layout: str = "paper") -> Tensor:
    """``(n_positions, d_model)`` table of sinusoids.

    ``layout="paper"`` (Vaswani et al. 2017, §3.5; ``base`` = 10000), for position ``pos`` and
    ``i < d_model / 2``::

        PE(pos, 2i)   = sin(pos / base^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / base^(2i / d_model))

    An odd ``d_model`` drops the last cosine.

    ``layout="fairseq"`` (fairseq's ``SinusoidalPositionalEmbedding.get_embedding``, as
    tensor2tensor's ``get_timing_signal_1d``), with ``h = d_model // 2`` and ``i < h``::

        PE(pos, i)     = sin(pos / base^(i / (h - 1)))
        PE(pos, h + i) = cos(pos / base^(i / (h - 1)))

    ``[sin | cos]`` halves instead of interleaved pairs (a permutation of the dimensions, harmless
    in distribution), and frequencies from 1 down to exactly ``1/base`` (the paper's lowest is
    ``base^(-(h-1)/h)``). An odd ``d_model`` appends a zero column. Needs ``d_model >= 4``.

    Raises:
        ValueError: unknown ``layout``; ``layout="fairseq"`` with ``d_model < 4``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sinusoid layout {layout!r}; choose one of {LAYOUTS}")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    if layout == "fairseq":
        half = d_model // 2
        if half < 2:  # the exponent divides by h - 1
            raise ValueError(f"the fairseq sinusoid layout needs d_model >= 4, got {d_model}")
        angle = pos * torch.exp(torch.arange(half, dtype=torch.float64) * (-math.log(base) / (half - 1)))
        table = torch.cat([torch.sin(angle), torch.cos(angle), torch.zeros(n_positions, d_model % 2,
                                                                           dtype=torch.float64)], dim=1)
        return table.float()
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
        layout: ``"paper"`` or ``"fairseq"`` (see :func:`sinusoidal_table`).
        start: position of the first token. fairseq numbers positions from ``padding_idx + 1``,
            2 with its dictionary (``<pad>`` = 1); the paper and torch from 0.

    Raises:
        ValueError: unknown ``layout`` (or ``"fairseq"`` with ``d_model < 4``), ``start`` < 0.
    """

    def __init__(self, d_model: int, max_len: int = 1024, layout: str = "paper", start: int = 0) -> None:
        super().__init__()
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.d_model, self.layout, self.start = d_model, layout, start
        self.register_buffer("table", sinusoidal_table(max_len + start, d_model, layout=layout), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings ``(length, D)`` of the tokens at ``offset .. offset + length - 1``: table rows
        from ``start + offset`` (the table grows past ``max_len`` as needed).

        Raises:
            IndexError: ``offset`` < 0.
        """
        if offset < 0:  # Python's negative indexing would wrap around to the table's end
            raise IndexError(f"position offset must be >= 0, got {offset}")
        first = self.start + offset
        end = first + length
        if end > self.table.size(0):
            self.table = sinusoidal_table(max(end, 2 * self.table.size(0)), self.d_model,
                                          layout=self.layout).to(self.table)
        return self.table[first:end]
