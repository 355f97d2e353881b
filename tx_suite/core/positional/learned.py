"""Learned absolute position embeddings (Gehring et al. 2017; Vaswani et al. 2017, §3.5;
Dosovitskiy et al. 2020, §3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnedPositionalEmbedding(nn.Module):
    """A trainable ``(max_len, D)`` table, initialised N(0, 0.02) as in BERT/GPT/ViT.

    Raises:
        IndexError: a position ``>= max_len`` is requested.
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(max_len, d_model), std=0.02))

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Embeddings of positions ``offset .. offset + length - 1``: ``(length, D)``.

        Raises:
            IndexError: ``offset`` < 0, or a position beyond ``max_len``.
        """
        if offset < 0:  # Python's negative indexing would wrap around to the table's end
            raise IndexError(f"position offset must be >= 0, got {offset}")
        end = offset + length
        if end > self.max_len:
            raise IndexError(f"position {end - 1} is beyond the learned table (max_len={self.max_len})")
        return self.weight[offset:end]
