"""Reference models with distinct norm and bias parameters, for weight-conversion equivalence tests.

At their usual init every LayerNorm is (1, 0) and torch/timm Linear and attention biases are often
zero: all norms are then the same function and every bias is the same zero, so a conversion that
swapped norm1 and norm2, reordered the q/k/v blocks of a fused bias, or dropped biases would
still reproduce the reference exactly.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_norms_and_biases_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every LayerNorm weight ``1 + 0.5 N(0, 1)`` and every bias ``0.5 N(0, 1)``, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
                elif name.endswith("bias"):  # bias, in_proj_bias, bias_k/bias_v
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model
