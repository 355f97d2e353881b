"""Transformer decoder layer (Vaswani et al. 2017, §3.1, "Decoder")."""

from __future__ import annotations

from torch import Tensor, nn

from .drop_path import DropPath
from .dropout import Dropout
from .feed_forward import FeedForward
from .kv_cache import LayerCache
from .multi_head_attention import MultiHeadAttention
from .packing import on_real_tokens
from .positional.rotary import RotaryEmbedding
from .residual import residual


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder memory, feed-forward.

    Each sub-layer sits in a residual block with dropout and LayerNorm, post-norm (paper) or
    pre-norm (``norm_first``), as :class:`EncoderLayer`. With ``cross_attention=False`` the layer
    is a GPT-style block (masked self-attention + feed-forward) for decoder-only models.
    Parameter names match ``torch.nn.TransformerDecoderLayer``: ``norm1`` (self-attention),
    ``norm2`` (cross-attention), ``norm3`` (feed-forward).

    Shapes: ``x`` ``(B, T, D)``, ``memory`` ``(B, S, D)`` -> ``(B, T, D)``.
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
        cross_attention: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, bias=bias, rope=rope)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.cross_attn = None
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, bias=bias, cross_attention=True)
            self.norm2 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        # None: dropout inside the FFN too, as torch.nn.Transformer (fairseq separates the two).
        ffn_dropout = dropout if activation_dropout is None else activation_dropout
        self.ffn = FeedForward(d_model, d_ff, ffn_dropout, activation, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        is_causal: bool = True,
        cache: LayerCache | None = None,
        real_index: Tensor | None = None,
        memory_real_index: Tensor | None = None,
    ) -> Tensor:
        """Run the layer.

        Args:
            x: target-side input ``(B, T, D)`` (only the new positions when ``cache`` is given).
            memory: encoder output ``(B, S, D)``; may be None with a filled cross cache.
            key_padding_mask: ``(B, T)`` bool, True = padding, for self-attention.
            memory_key_padding_mask: ``(B, S)`` bool, True = padding, for cross-attention.
            attn_mask: extra self-attention mask (bool True = may attend, or float).
            memory_mask: cross-attention mask (bool True = may attend, or float), broadcastable
                to ``(B, H, T, S)``.
            is_causal: causal self-attention (default, as the decoder needs).
            cache: this layer's :class:`LayerCache`, updated in place.
            real_index: ``(N,)`` flat indices of the real target tokens
                (:func:`~tx_suite.core.packing.real_token_index`): the projections and the
                feed-forward block then skip padded rows. ``memory_real_index``: the same for
                ``memory`` (the cross-attention key/value projection).

        Raises:
            ValueError: ``memory`` given to a layer without cross-attention.
        """
        if self.cross_attn is None and memory is not None:
            raise ValueError("this decoder layer has no cross-attention; do not pass `memory`")
        def sa(h: Tensor) -> Tensor:
            return self.self_attn(h, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                                  cache=cache.self_attn if cache is not None else None, real_index=real_index)[0]

        def ca(h: Tensor) -> Tensor:
            return self.cross_attn(h, memory, key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask,
                                   cache=cache.cross_attn if cache is not None else None, real_index=real_index,
                                   memory_real_index=memory_real_index)[0]

        x = residual(x, sa, self.norm1, self.dropout, self.drop_path, self.norm_first)
        if self.cross_attn is not None:
            x = residual(x, ca, self.norm2, self.dropout, self.drop_path, self.norm_first)
        if self.drop_path.p > 0 and self.training:
            real_index = None  # DropPath drops whole samples, which a packed (N, D) batch lacks
        return on_real_tokens(x, real_index, lambda h: residual(
            h, self.ffn, self.norm3, self.dropout, self.drop_path, self.norm_first))
