"""Token embeddings for text (Vaswani et al. 2017, §3.4 and §3.5)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..core.dropout import Dropout
from ..core.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

POS_ENCODINGS = ("sinusoidal", "sinusoidal_fairseq", "learned", "none")


class TokenEmbedding(nn.Module):
    """``x = E[tokens] * sqrt(d_model) + PE(positions)``, then dropout.

    §3.4: "In the embedding layers, we multiply those weights by sqrt(d_model)"; §3.5 adds the
    positional encodings and §5.4 applies dropout to the sum. Weights are drawn from
    a normal distribution with standard deviation d_model^-1/2, so the scaled embeddings have unit
    variance (as fairseq), and the
    ``pad_id`` row is zero. For a tied output projection (§3.4, Press & Wolf 2017) share
    :attr:`weight`: ``lm_head.weight = emb.weight``.

    Args:
        vocab_size: number of token ids ``V``.
        d_model: width ``D``.
        pad_id: padding id, or None. Its row starts at zero and gets no gradient from the lookup;
            a tied output projection still trains it, which is harmless (padded keys are masked).
        pos_encoding: ``"sinusoidal"`` (§3.5), ``"sinusoidal_fairseq"`` (fairseq's table and
            positions from 2: :class:`SinusoidalPositionalEncoding` with ``layout="fairseq",
            start=2``, to reproduce fairseq recipes), ``"learned"`` or ``"none"`` (e.g. with
            rotary embeddings inside attention).
        max_len: learned table size / sinusoidal rows precomputed.
        dropout: dropout on the sum.
        scale: multiply by ``sqrt(d_model)``.

    Shapes: ``tokens`` ``(B, T)`` long -> ``(B, T, D)``.

    Raises:
        ValueError: unknown ``pos_encoding``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        pad_id: int | None = None,
        pos_encoding: str = "sinusoidal",
        max_len: int = 1024,
        dropout: float = 0.0,
        scale: bool = True,
    ) -> None:
        super().__init__()
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"unknown pos_encoding {pos_encoding!r}; choose one of {POS_ENCODINGS}")
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        if pad_id is not None:
            nn.init.zeros_(self.embedding.weight[pad_id])
        self.scale = math.sqrt(d_model) if scale else 1.0
        self.pos: nn.Module | None = {
            "sinusoidal": lambda: SinusoidalPositionalEncoding(d_model, max_len),
            "sinusoidal_fairseq": lambda: SinusoidalPositionalEncoding(d_model, max_len, layout="fairseq", start=2),
            "learned": lambda: LearnedPositionalEmbedding(max_len, d_model),
            "none": lambda: None,
        }[pos_encoding]()
        self.dropout = Dropout(dropout)

    @property
    def weight(self) -> nn.Parameter:
        """The ``(V, D)`` embedding matrix (share it with an output projection to tie them)."""
        return self.embedding.weight

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """Embed ``tokens`` ``(B, T)`` at positions ``offset .. offset + T - 1``.

        ``offset`` is the number of positions already decoded (``cache.length``).
        """
        x = self.embedding(tokens) * self.scale
        if self.pos is not None:
            x = x + self.pos(tokens.size(1), offset)
        return self.dropout(x)
