"""The joint [text tokens, begin-of-image, image tokens] sequence of a decoder-only
text-to-image model (Ramesh et al. 2021, DALL-E, §2.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .image_token_grid import ImageTokenGrid
from .token_embedding import TokenEmbedding


class TextImageSequence(nn.Module):
    """Embeds ``[t_1 .. t_L, <boi>, i_1 .. i_N]`` for one causal stream over text and image.

    DALL-E "concatenate[s] up to 256 BPE-encoded text tokens with the 32 x 32 = 1024 image tokens"
    and models them autoregressively as a single stream. Text is a fixed-length, right-padded
    block of ``text_len`` tokens (positions ``0 .. L-1`` from the text front-end); a learned
    begin-of-image vector follows; image tokens carry 2-D grid positions from
    :class:`ImageTokenGrid`. The output at ``<boi>`` predicts ``i_1``; the output at ``i_j``
    predicts ``i_{j+1}``.

    Args:
        text: text front-end (its positions cover ``0 .. text_len - 1``).
        image: image-token front-end.
        text_len: fixed text length ``L``.
        pad_id: text padding id, reported in the returned key padding mask.

    Shapes: ``text_tokens`` ``(B, L)``, ``image_codes`` ``(B, n)`` with ``n <= N`` or ``(B, H, W)`` ->
    ``(B, L + 1 + n, D)`` and a ``(B, L + 1 + n)`` key padding mask (True = text padding).

    Raises:
        ValueError: text tokens not of length ``text_len``; image codes of another grid shape.
    """

    def __init__(self, text: TokenEmbedding, image: ImageTokenGrid, text_len: int, pad_id: int) -> None:
        super().__init__()
        self.text, self.image = text, image
        self.text_len, self.pad_id = text_len, pad_id
        self.boi = nn.Parameter(torch.zeros(1, 1, image.embedding.embedding_dim).normal_(std=0.02))

    @property
    def prefix_len(self) -> int:
        """Length of ``[text, <boi>]``: the image token ``i_1`` is predicted at index ``prefix_len - 1``."""
        return self.text_len + 1

    def embed_prefix(self, text_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``[text, <boi>]`` -> ``(B, L + 1, D)`` and its ``(B, L + 1)`` key padding mask."""
        if text_tokens.size(1) != self.text_len:
            raise ValueError(f"expected {self.text_len} text tokens (padded), got {text_tokens.size(1)}")
        b = text_tokens.size(0)
        x = torch.cat([self.text(text_tokens), self.boi.expand(b, -1, -1)], dim=1)
        pad = torch.cat([text_tokens == self.pad_id, text_tokens.new_zeros(b, 1, dtype=torch.bool)], dim=1)
        return x, pad

    def embed_image(self, image_codes: Tensor, offset: int = 0) -> Tensor:
        """Image codes ``(B, n)`` at raster positions ``offset ..`` -> ``(B, n, D)``."""
        return self.image(image_codes, offset)

    def forward(self, text_tokens: Tensor, image_codes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Embed the joint sequence; returns ``(x, key_padding_mask)``."""
        x, pad = self.embed_prefix(text_tokens)
        if image_codes is not None:
            image = self.embed_image(image_codes)  # (B, n, D); a (B, H, W) grid is checked and flattened there
            x = torch.cat([x, image], dim=1)
            pad = torch.cat([pad, pad.new_zeros(pad.size(0), image.size(1))], dim=1)
        return x, pad
