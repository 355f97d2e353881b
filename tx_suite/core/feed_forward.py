"""Position-wise feed-forward network (Vaswani et al. 2017, §3.3, Eq. 2)."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # Vaswani et al. 2017, Eq. 2
    "gelu": F.gelu,  # Hendrycks & Gimpel 2016; ViT (Dosovitskiy et al. 2020, §3.1)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
    "silu": F.silu,  # Ramachandran et al. 2017 ("swish")
}


def get_activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Activation by name (``relu``, ``gelu``, ``gelu_tanh``, ``silu``) or a callable as is.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}") from None


class FeedForward(nn.Module):
    """``FFN(x) = fc2(dropout(act(fc1(x))))``; with ReLU this is Eq. 2, ``max(0, x W1 + b1) W2 + b2``.

    Args:
        d_model: input/output width ``D``.
        d_ff: inner width (2048 for ``D`` = 512 in the paper).
        dropout: dropout after the activation (as ``torch.nn.TransformerEncoderLayer`` and timm's
            ``Mlp`` apply it).
        activation: name (see :data:`ACTIVATIONS`) or callable.
        bias: use biases.

    Shapes: ``(..., D) -> (..., D)``.

    Raises:
        ValueError: unknown ``activation`` name; ``dropout`` outside [0, 1).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str | Callable[[Tensor], Tensor] = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.act = get_activation(activation)
        self.dropout = Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))
