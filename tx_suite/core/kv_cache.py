"""Key/value caches for incremental (token-by-token) decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .masks import check_key_padding_mask


class KVCache:
    """Keys and values of one attention module, ``(B, H, T, Dh)`` each.

    Self-attention appends the new positions' keys/values at every step; cross-attention stores
    the projected encoder memory once and reuses it. ``key_padding_mask`` (``(B, T)``, True = pad)
    is kept alongside when the caller provides one, so later steps mask the same keys.

    Appended positions are written into buffers whose capacity doubles when full, so a step copies
    only its own keys/values (amortised O(1) per position) instead of concatenating the whole
    history (O(T) per step, O(T^2) per sequence). ``k``/``v``/``key_padding_mask`` are views of
    the first ``length`` positions. The in-place writes make the cache an inference-time tool:
    do not back-propagate through keys/values read from it.
    """

    def __init__(self) -> None:
        self._k: Tensor | None = None  # (B, H, capacity, Dh)
        self._v: Tensor | None = None
        self._mask: Tensor | None = None  # (B, capacity) bool, True = pad
        self._length = 0

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self._length

    @property
    def k(self) -> Tensor | None:
        return None if self._k is None else self._k[:, :, : self._length]

    @property
    def v(self) -> Tensor | None:
        return None if self._v is None else self._v[:, :, : self._length]

    @property
    def key_padding_mask(self) -> Tensor | None:
        return None if self._mask is None else self._mask[:, : self._length]

    @staticmethod
    def _grow(buf: Tensor, dim: int, needed: int) -> Tensor:
        """``buf`` with capacity ``>= needed`` along ``dim`` (doubling), the old contents kept."""
        if buf.size(dim) >= needed:
            return buf
        shape = list(buf.shape)
        shape[dim] = max(needed, 2 * buf.size(dim))
        out = buf.new_zeros(shape)
        out.narrow(dim, 0, buf.size(dim)).copy_(buf)
        return out

    def append(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Append ``(B, H, Tnew, Dh)`` keys/values; return all cached ``(B, H, T, Dh)``.

        Raises:
            TypeError: ``key_padding_mask`` is not bool (as without a cache; storing would cast it).
        """
        check_key_padding_mask(key_padding_mask)
        prev, t_new = self._length, k.size(-2)
        end = prev + t_new
        if self._k is None:
            # First call: buffers sized to what arrives (a prefill), grown on the next step.
            self._k, self._v = k.new_empty(k.shape), v.new_empty(v.shape)
        self._k, self._v = self._grow(self._k, 2, end), self._grow(self._v, 2, end)
        self._k[:, :, prev:end] = k
        self._v[:, :, prev:end] = v
        if key_padding_mask is not None or self._mask is not None:
            if self._mask is None:  # earlier positions had no mask: none of them is padding
                self._mask = torch.zeros(k.size(0), self._k.size(2), dtype=torch.bool, device=k.device)
            self._mask = self._grow(self._mask, 1, end)
            if key_padding_mask is None:
                self._mask[:, prev:end] = False
            else:
                self._mask[:, prev:end] = key_padding_mask
        self._length = end
        return self.k, self.v

    def set(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> None:
        """Store keys/values computed once (cross-attention memory).

        Raises:
            TypeError: ``key_padding_mask`` is not bool.
        """
        check_key_padding_mask(key_padding_mask)
        self._k, self._v, self._mask, self._length = k, v, key_padding_mask, k.size(-2)

    def reorder(self, index: Tensor) -> None:
        """Select batch entries: ``index`` is ``(B',)`` long (beam search reordering)."""
        if self._k is not None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)


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
    #: Positions already decoded, advanced by the decoder's forward. Kept here rather than read
    #: from the first layer's keys so that a zero-layer stack still offsets its positions.
    length: int = 0

    def reorder(self, index: Tensor, include_cross: bool = True) -> None:
        """Reorder/select batch entries of every cache, ``index`` ``(B',)`` long.

        Beam search that only permutes hypotheses of the same source sentence can pass
        ``include_cross=False``: the cross-attention memory is the same for them.
        """
        for layer in self.layers:
            layer.self_attn.reorder(index)
            if include_cross and layer.cross_attn is not None:
                layer.cross_attn.reorder(index)
