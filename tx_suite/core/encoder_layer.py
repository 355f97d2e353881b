"""Transformer encoder layer (Vaswani et al. 2017, §3.1, "Encoder")."""

from __future__ import annotations

from torch import Tensor, nn

from .drop_path import DropPath
from .dropout import Dropout
from .feed_forward import FeedForward
from .multi_head_attention import MultiHeadAttention
from .packing import on_real_tokens
from .positional.rotary import RotaryEmbedding
from .residual import residual


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual block with dropout and LayerNorm.

    Post-norm (paper, §3.1: ``LayerNorm(x + Sublayer(x))``)::

        x = norm1(x + drop(self_attn(x)));  x = norm2(x + drop(ffn(x)))

    Pre-norm (``norm_first``; Xiong et al. 2020, used by ViT)::

        x = x + drop(self_attn(norm1(x)));  x = x + drop(ffn(norm2(x)))

    where ``drop`` is residual dropout (§5.4) followed by :class:`DropPath`. Parameter names match
    ``torch.nn.TransformerEncoderLayer`` (``norm1``, ``norm2``) and timm's ViT ``Block``.

    Shapes: ``(B, T, D) -> (B, T, D)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        bias: bool = True,
        drop_path: float = 0.0,
        rope: RotaryEmbedding | None = None,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, bias=bias, rope=rope)
        # None: dropout inside the FFN too, as torch.nn.Transformer (fairseq separates the two).
        ffn_dropout = dropout if activation_dropout is None else activation_dropout
        self.ffn = FeedForward(d_model, d_ff, ffn_dropout, activation, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        real_index: Tensor | None = None,
        n_queries: int | None = None,
    ) -> Tensor:
        """``x`` ``(B, T, D)``; ``key_padding_mask`` ``(B, T)`` True = pad; ``attn_mask`` as in
        :class:`MultiHeadAttention`; ``real_index`` ``(N,)`` flat indices of the real tokens
        (:func:`~tx_suite.core.packing.real_token_index`): the projections and the feed-forward
        block then skip padded rows. ``n_queries``: compute only the first ``n_queries`` outputs
        ``(B, n_queries, D)`` (they attend to all ``T`` positions); see
        :class:`MultiHeadAttention`."""
        def sa(h: Tensor) -> Tensor:
            return self.self_attn(h, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                                  real_index=real_index, n_queries=n_queries)[0]

        if n_queries is None:
            x = residual(x, sa, self.norm1, self.dropout, self.drop_path, self.norm_first)
        elif self.norm_first:
            # The residual stream keeps the first rows only; keys/values still see every position.
            x = x[:, :n_queries] + self.drop_path(self.dropout(sa(self.norm1(x))))
        else:
            x = self.norm1(x[:, :n_queries] + self.drop_path(self.dropout(sa(x))))
        if self.drop_path.p > 0 and self.training:
            real_index = None  # DropPath drops whole samples, which a packed (N, D) batch lacks
        return on_real_tokens(x, real_index, lambda h: residual(
            h, self.ffn, self.norm2, self.dropout, self.drop_path, self.norm_first))
