"""2-D (row/column) position embeddings for token grids (Ramesh et al. 2021, DALL-E, App. B.1:
image tokens get "separate row and column" position embeddings)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Grid2DPositionalEmbedding(nn.Module):
    """``pos(r, c) = row[r] + col[c]`` for an ``H x W`` grid read in raster order.

    Flat index ``p`` maps to ``(r, c) = (p // W, p % W)``.

    Args:
        height: grid rows ``H``.
        width: grid columns ``W``.
        d_model: width ``D``.

    Raises:
        IndexError: a flat position ``>= H * W`` is requested.
    """

    def __init__(self, height: int, width: int, d_model: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.row = nn.Parameter(nn.init.trunc_normal_(torch.empty(height, d_model), std=0.02))
        self.col = nn.Parameter(nn.init.trunc_normal_(torch.empty(width, d_model), std=0.02))

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Embeddings of raster positions ``offset .. offset + length - 1``: ``(length, D)``.

        Raises:
            IndexError: ``offset`` < 0, or a position outside the grid.
        """
        if offset < 0:  # Python's negative indexing would wrap around to the table's end
            raise IndexError(f"position offset must be >= 0, got {offset}")
        end = offset + length
        if end > self.height * self.width:
            raise IndexError(f"grid position {end - 1} is outside the {self.height}x{self.width} grid")
        p = torch.arange(offset, end, device=self.row.device)
        return self.row[p // self.width] + self.col[p % self.width]
