"""Multi-head attention (Vaswani et al. 2017, §3.2.2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot_product_attention
from .kv_cache import KVCache
from .masks import causal_mask, merge_masks, padding_to_attn_mask
from .packing import project_real_tokens
from .positional.rotary import RotaryEmbedding


class MultiHeadAttention(nn.Module):
    """``MultiHead(Q, K, V) = Concat(head_1..head_h) W^O``, ``head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)``.

    ``d_model`` is split over ``n_heads`` heads of ``Dh = d_model / n_heads`` (§3.2.2). Self-attention
    uses one fused ``(D -> 3D)`` QKV projection; cross-attention (``cross_attention=True``) projects
    queries from the decoder (``q_proj``) and keys/values from the encoder memory (``kv_proj``,
    ``D -> 2D``), as in §3.2.3 ("queries come from the previous decoder layer, and the memory keys
    and values come from the output of the encoder").

    The weight layout matches ``torch.nn.MultiheadAttention`` (``qkv_proj.weight`` =
    ``in_proj_weight``; ``q_proj``/``kv_proj`` are its row blocks) and timm's ``Attention``
    (``qkv``, ``proj``), so weights map one-to-one.

    Args:
        d_model: model width ``D``.
        n_heads: number of heads ``H``; must divide ``d_model``.
        dropout: dropout on the attention weights (training only).
        bias: use biases in the projections.
        cross_attention: keys/values come from a separate ``memory`` input.
        rope: a shared :class:`RotaryEmbedding` applied to queries and keys (self-attention only).

    Raises:
        ValueError: ``d_model`` or ``n_heads`` below 1; ``d_model`` is not divisible by
            ``n_heads``; ``rope`` with cross-attention.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        cross_attention: bool = False,
        rope: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be >= 1, got d_model={d_model}, n_heads={n_heads}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if rope is not None and cross_attention:
            raise ValueError("rotary embeddings apply to self-attention only")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.cross_attention = cross_attention
        if cross_attention:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.rope = rope
        # Set by tx_suite.core.record_attention: keep the last attention weights for inspection.
        self.record_weights = False
        self.last_weights: Tensor | None = None

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        real_index: Tensor | None = None,
        memory_real_index: Tensor | None = None,
        n_queries: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` to itself (self-attention) or to ``memory`` (cross-attention).

        Args:
            x: queries' input ``(B, Tq, D)`` (and keys/values' for self-attention).
            memory: encoder output ``(B, Tk, D)``; cross-attention only. With a filled ``cache``
                it may be None (the cached projection is reused).
            key_padding_mask: ``(B, Tk)`` bool, True = padding. With a self-attention ``cache``
                give the mask of the new positions only; the cache keeps the earlier ones.
            attn_mask: bool (True = may attend) or float mask broadcastable to ``(B, H, Tq, Tk)``.
            is_causal: mask future positions (bottom-right aligned, so it also holds with a cache).
            cache: :class:`KVCache` for incremental decoding; updated in place.
            need_weights: also return the attention weights.
            real_index: ``(N,)`` flat indices of the real rows of ``x`` viewed as ``(B*Tq, D)``
                (:func:`~tx_suite.core.packing.real_token_index`): projections skip the others,
                whose outputs are then zero. ``memory_real_index``: the same for ``memory``.
            n_queries: self-attention only: queries from the first ``n_queries`` positions of
                ``x``, keys/values from all ``T`` of them, so the output is ``(B, n_queries, D)``.
                Equal to the first rows of the full output, for a fraction of the query-side work
                (a ViT's last layer only needs its CLS row). ``attn_mask`` is given for all
                ``T`` queries and sliced here.

        Returns:
            ``(out, weights)``: ``out`` ``(B, Tq, D)``; ``weights`` ``(B, H, Tq, Tk)`` or None.

        Raises:
            ValueError: cross-attention without ``memory`` and without a filled cache;
                ``n_queries`` outside ``1..T`` or with cross-attention, a cache, ``real_index``
                or rotary embeddings.
        """
        b, t, d = x.shape
        if n_queries is not None and self.cross_attention:
            raise ValueError("n_queries is for self-attention; cross-attention's queries are `x` itself")
        if self.cross_attention:
            q = self._split_heads(project_real_tokens(x, real_index, self.q_proj))
            if cache is not None and cache.k is not None:
                k, v, key_padding_mask = cache.k, cache.v, cache.key_padding_mask
            else:
                if memory is None:
                    raise ValueError("cross-attention needs `memory` (or a filled cache)")
                kv = project_real_tokens(memory, memory_real_index, self.kv_proj)
                k, v = kv.split(d, dim=-1)  # (B, Tk, 2D) -> 2 x (B, Tk, D)
                k, v = self._split_heads(k), self._split_heads(v)
                if cache is not None:
                    cache.set(k, v, key_padding_mask)
        elif n_queries is not None:
            if not 1 <= n_queries <= t:
                raise ValueError(f"n_queries must be in 1..{t}, got {n_queries}")
            if cache is not None or real_index is not None or self.rope is not None:
                raise ValueError("n_queries works with self-attention without a cache, real_index "
                                 "or rotary embeddings")
            if is_causal:
                # The kernel would align t < T causal queries with the last keys (bottom-right);
                # these are the first t positions: mask as the full T x T pass does, then slice.
                attn_mask = merge_masks(attn_mask, causal_mask(t, t, device=x.device))
                is_causal = False
            # Keys/values need every position, queries only the kept ones: split the fused weight
            # (row blocks q | k | v, as nn.MultiheadAttention's in_proj_weight).
            w_q, w_kv = self.qkv_proj.weight.split([d, 2 * d])
            b_q, b_kv = (None, None) if self.qkv_proj.bias is None else self.qkv_proj.bias.split([d, 2 * d])
            t = n_queries
            q = self._split_heads(F.linear(x[:, :t], w_q, b_q))  # (B, t, D) -> (B, H, t, Dh)
            k, v = F.linear(x, w_kv, b_kv).split(d, dim=-1)  # (B, T, 2D) -> 2 x (B, T, D)
            k, v = self._split_heads(k), self._split_heads(v)
            if attn_mask is not None and attn_mask.dim() >= 2 and attn_mask.size(-2) > 1:
                attn_mask = attn_mask[..., :t, :]  # (..., T, Tk) -> (..., t, Tk)
        else:
            qkv = project_real_tokens(x, real_index, self.qkv_proj)
            q, k, v = qkv.split(d, dim=-1)  # (B, T, 3D) -> 3 x (B, T, D)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if self.rope is not None:
                q, k = self.rope(q, k, offset=cache.length if cache is not None else 0)
            if cache is not None:
                k, v = cache.append(k, v, key_padding_mask)
                key_padding_mask = cache.key_padding_mask

        mask = attn_mask
        if key_padding_mask is not None:
            mask = merge_masks(mask, padding_to_attn_mask(key_padding_mask))
        keep = need_weights or self.record_weights
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal, need_weights=keep,
        )
        if self.record_weights:
            self.last_weights = weights.detach()
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, H, Tq, Dh) -> (B, Tq, D)
        return project_real_tokens(out, real_index, self.out_proj), (weights if need_weights else None)
