"""Capturing attention weights for visualisation."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn

from .multi_head_attention import MultiHeadAttention


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the attention weights of every :class:`MultiHeadAttention` inside ``model``.

    Within the block the modules compute weights explicitly (slower than the fused kernel, same
    outputs). The yielded dict maps each module's qualified name (e.g.
    ``"decoder.layers.0.cross_attn"``) to the detached weights ``(B, H, Tq, Tk)`` of its most
    recent call; it is filled as the model runs.

    Example::

        with record_attention(model) as maps:
            model(src, tgt)
        maps["decoder.layers.5.cross_attn"]  # (B, H, T, S)
    """
    maps: dict[str, Tensor] = {}
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    handles = []
    for name, m in modules:
        m.record_weights = True

        def hook(mod: MultiHeadAttention, args, output, name: str = name) -> None:
            maps[name] = mod.last_weights

        handles.append(m.register_forward_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for _, m in modules:
            m.record_weights = False
            m.last_weights = None
