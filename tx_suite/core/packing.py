"""Skip padding in the position-wise parts of a layer (the "remove padding" trick of
FasterTransformer's Effective Transformer and of PyTorch's nested-tensor fast path, here also in
training).

The feed-forward block (with its norm, dropout and residual, Vaswani et al. 2017, §3.3) and the
attention projections act on each position on its own, so on a padded batch they can run on the
real tokens only: gather them into ``(N, D)``, apply, scatter back. Only the attention product
itself needs the padded ``(B, T)`` layout. Real-token outputs are unchanged (up to float rounding,
since the matrix products change shape); padded rows skip the feed-forward block and get zero
projections, which nothing reads: attention masks pad keys, and losses ignore pad targets.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .masks import check_key_padding_mask


def real_token_index(key_padding_mask: Tensor | None, min_pad_fraction: float = 0.05) -> Tensor | None:
    """Flat indices ``(N,)`` of the real tokens of a ``(B, T)`` mask (True = pad), or None when
    there is no mask or less than ``min_pad_fraction`` padding (gathering would cost more than
    it saves).

    Raises:
        TypeError: ``key_padding_mask`` is not bool (checked here, the first place that reads it).
    """
    if key_padding_mask is None:
        return None
    check_key_padding_mask(key_padding_mask)
    real = ~key_padding_mask.reshape(-1)
    # One host sync per forward pass (not per layer): the count decides whether packing pays.
    n_real = int(real.sum())
    if n_real > (1.0 - min_pad_fraction) * real.numel():
        return None
    return real.nonzero().squeeze(1)


def on_real_tokens(x: Tensor, index: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` applied to the rows ``index`` of ``x`` ``(B, T, D)`` viewed as ``(B*T, D)``; other
    rows are returned as they are. ``fn`` must be position-wise. ``index=None``: ``fn(x)``."""
    if index is None:
        return fn(x)
    flat = x.reshape(-1, x.size(-1))  # (B*T, D)
    return torch.index_copy(flat, 0, index, fn(flat.index_select(0, index))).view_as(x)


def project_real_tokens(x: Tensor, index: Tensor | None, linear: Callable[[Tensor], Tensor]) -> Tensor:
    """``linear`` applied to the rows ``index`` of ``x`` ``(B, T, Din)``, zeros in the other rows:
    ``(B, T, Dout)``. ``index=None``: ``linear(x)``."""
    if index is None:
        return linear(x)
    flat = x.reshape(-1, x.size(-1))  # (B*T, Din)
    y = linear(flat.index_select(0, index))  # (N, Dout)
    return y.new_zeros(flat.size(0), y.size(-1)).index_copy(0, index, y).view(*x.shape[:-1], y.size(-1))
