"""Key/value caches for incremental (token-by-token) decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Keys and values of one attention module, ``(B, H, T, Dh)`` each.

    Self-attention appends the new positions' keys/values at every step; cross-attention stores
    the projected encoder memory once and reuses it. ``key_padding_mask`` (``(B, T)``, True = pad)
    is kept alongside when the caller provides one, so later steps mask the same keys.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    key_padding_mask: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.k is None else self.k.size(-2)

    def append(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Append ``(B, H, Tnew, Dh)`` keys/values; return all cached ``(B, H, T, Dh)``."""
        prev = self.length
        if key_padding_mask is not None or self.key_padding_mask is not None:
            new = key_padding_mask
            if new is None:
                new = torch.zeros(k.size(0), k.size(-2), dtype=torch.bool, device=k.device)
            old = self.key_padding_mask
            if old is None:
                old = torch.zeros(k.size(0), prev, dtype=torch.bool, device=k.device)
            self.key_padding_mask = torch.cat([old, new], dim=1)
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def set(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> None:
        """Store keys/values computed once (cross-attention memory)."""
        self.k, self.v, self.key_padding_mask = k, v, key_padding_mask

    def reorder(self, index: Tensor) -> None:
        """Select batch entries: ``index`` is ``(B',)`` long (beam search reordering)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)
        if self.key_padding_mask is not None:
            self.key_padding_mask = self.key_padding_mask.index_select(0, index)


@dataclass
class LayerCache:
    """Caches of one decoder layer: masked self-attention and (optionally) cross-attention."""

    self_attn: KVCache = field(default_factory=KVCache)
    cross_attn: KVCache | None = None


@dataclass
class DecoderCache:
    """Caches of a whole decoder stack, one :class:`LayerCache` per layer.

    Create with :meth:`tx_suite.core.Decoder.new_cache`, pass to every decoder call, feeding only
    the new positions each time.
    """

    layers: list[LayerCache]

    @property
    def length(self) -> int:
        """Number of positions already decoded (the position offset of the next input)."""
        return self.layers[0].self_attn.length if self.layers else 0

    def reorder(self, index: Tensor, include_cross: bool = True) -> None:
        """Reorder/select batch entries of every cache, ``index`` ``(B',)`` long.

        Beam search that only permutes hypotheses of the same source sentence can pass
        ``include_cross=False``: the cross-attention memory is the same for them.
        """
        for layer in self.layers:
            layer.self_attn.reorder(index)
            if include_cross and layer.cross_attn is not None:
                layer.cross_attn.reorder(index)
