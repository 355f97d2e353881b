"""The residual sub-layer connection shared by encoder and decoder layers."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn


def residual(
    x: Tensor,
    sublayer: Callable[[Tensor], Tensor],
    norm: nn.Module,
    dropout: nn.Module,
    drop_path: nn.Module,
    norm_first: bool,
) -> Tensor:
    """Post-norm ``LN(x + D(f(x)))`` (Vaswani et al. 2017, §3.1/§5.4) or pre-norm
    ``x + D(f(LN(x)))`` (Xiong et al. 2020), with ``D`` = residual dropout then drop-path."""
    if norm_first:
        return x + drop_path(dropout(sublayer(norm(x))))
    return norm(x + drop_path(dropout(sublayer(x))))
