"""Weight initialisation shared by the stacks."""

from __future__ import annotations

import math

from torch import nn

from .multi_head_attention import MultiHeadAttention


CROSS_ATTN_INITS = ("split", "fused")


def xavier_init_(module: nn.Module, cross_attn_init: str = "split") -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` (Glorot & Bengio 2010), as
    ``torch.nn.Transformer`` and fairseq initialise Transformers; LayerNorms stay at (1, 0).

    Each ``nn.Linear`` gets its own bound ``sqrt(6 / (fan_in + fan_out))``. Self-attention's fused
    ``qkv_proj`` ``(3D, D)`` therefore matches torch's ``in_proj_weight`` (and fairseq's per-matrix
    gain ``1/sqrt(2)``) exactly. Cross-attention is split into ``q_proj`` ``(D, D)`` and ``kv_proj``
    ``(2D, D)``: with ``cross_attn_init="split"`` (the default, kept because every recorded
    translation result was trained with it, ``benchmarks/RESULTS.md``) its query weights start
    sqrt(2) and its key/value weights sqrt(4/3) wider than torch's fused cross-attention matrix;
    ``"fused"`` draws both with the ``(3D, D)`` bound ``sqrt(6 / 4D)``, as torch and fairseq.

    Raises:
        ValueError: unknown ``cross_attn_init``.
    """
    if cross_attn_init not in CROSS_ATTN_INITS:
        raise ValueError(f"unknown cross_attn_init {cross_attn_init!r}; choose one of {CROSS_ATTN_INITS}")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if cross_attn_init == "fused":
        for m in module.modules():
            if isinstance(m, MultiHeadAttention) and m.cross_attention:
                d = m.q_proj.in_features
                bound = math.sqrt(6.0 / (d + 3 * d))  # torch's in_proj_weight is (3D, D)
                nn.init.uniform_(m.q_proj.weight, -bound, bound)
                nn.init.uniform_(m.kv_proj.weight, -bound, bound)


def drop_path_rates(rate: float, n_layers: int) -> list[float]:
    """Stochastic-depth rate per layer: linear from 0 (first layer) to ``rate`` (last), as DeiT and
    timm's ``linspace``; a single layer gets ``rate`` (timm gives it 0). Huang et al. 2016, §3's
    "linear decay rule" would start at ``rate / L`` instead."""
    if n_layers == 1:
        return [rate]
    return [rate * i / (n_layers - 1) for i in range(n_layers)]
