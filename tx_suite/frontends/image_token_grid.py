"""Embedding of discrete image codes on an H x W grid (Ramesh et al. 2021, DALL-E, §2.2)."""

from __future__ import annotations

from torch import Tensor, nn

from ..core.dropout import Dropout
from ..core.positional import Grid2DPositionalEmbedding


class ImageTokenGrid(nn.Module):
    """``x = E_img[code] + row[r] + col[c]`` for codes read in raster order.

    DALL-E models a 32 x 32 grid of dVAE codes as 1024 image tokens with their own embedding and
    row/column position embeddings. Codes may be given as a grid ``(B, H, W)`` or flat ``(B, N)``;
    flat input may be a prefix (``N <= H * W``) starting at raster position ``offset``, as in
    incremental sampling.

    Args:
        codebook_size: number of image codes ``K``.
        d_model: width ``D``.
        height: grid rows ``H``.
        width: grid columns ``W``.
        dropout: dropout on the sum.

    Shapes: ``(B, H, W)`` or ``(B, N)`` long -> ``(B, N, D)``.

    Raises:
        ValueError: a grid input that is not ``(B, H, W)``, or input of another rank.
        IndexError: positions beyond the grid.
    """

    def __init__(self, codebook_size: int, d_model: int, height: int, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.codebook_size, self.height, self.width = codebook_size, height, width
        self.embedding = nn.Embedding(codebook_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.pos = Grid2DPositionalEmbedding(height, width, d_model)
        self.dropout = Dropout(dropout)

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    def forward(self, codes: Tensor, offset: int = 0) -> Tensor:
        if codes.dim() == 3:
            # A transposed (B, W, H) grid would flatten to the right length with every code at the
            # wrong 2-D position, silently.
            if tuple(codes.shape[1:]) != (self.height, self.width) or offset:
                raise ValueError(
                    f"image codes as a grid must be (B, {self.height}, {self.width}) at offset 0, "
                    f"got {tuple(codes.shape)} at offset {offset}"
                )
            codes = codes.flatten(1)  # (B, H, W) -> (B, H*W)
        elif codes.dim() != 2:
            raise ValueError(f"image codes must be (B, H, W) or (B, N), got shape {tuple(codes.shape)}")
        return self.dropout(self.embedding(codes) + self.pos(codes.size(1), offset))
