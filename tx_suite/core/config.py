"""Hyper-parameters shared by the layers of one Transformer stack."""

from __future__ import annotations

from dataclasses import dataclass

from .feed_forward import ACTIVATIONS
from .init import CROSS_ATTN_INITS


@dataclass
class TransformerConfig:
    """Width, heads and regularisation of an encoder/decoder stack.

    Defaults are the base model of Vaswani et al. 2017 (Table 3: ``d_model`` 512, 8 heads,
    ``d_ff`` 2048, ``P_drop`` 0.1, post-norm).

    Attributes:
        d_model: model width ``D``.
        n_heads: attention heads ``H`` (must divide ``d_model``).
        d_ff: feed-forward inner width.
        dropout: residual dropout (§5.4), and dropout inside the feed-forward network unless
            ``activation_dropout`` is set.
        attn_dropout: dropout on attention weights (``torch.nn.Transformer`` uses ``dropout``
            here too; fairseq and timm default to 0).
        activation_dropout: dropout after the feed-forward activation; None means ``dropout``
            (``torch.nn.Transformer``, timm). fairseq keeps it separate and defaults it to 0, so a
            fairseq recipe's ``--dropout 0.3`` is ``dropout=0.3, activation_dropout=0``.
        activation: feed-forward activation, ``relu`` (paper), ``gelu`` (ViT), ``gelu_tanh``, ``silu``.
        norm_first: pre-norm ``x + f(LN(x))`` (Xiong et al. 2020; ViT) instead of the paper's
            post-norm ``LN(x + f(x))``.
        norm_eps: LayerNorm epsilon (1e-5 in torch, 1e-6 in timm's ViT).
        bias: biases in linear layers and LayerNorms (as ``torch.nn.Transformer(bias=False)``).
        drop_path: stochastic-depth rate of the last layer, rising linearly from 0 at the first
            (DeiT/timm; :func:`tx_suite.core.init.drop_path_rates`).
        final_norm: LayerNorm after the last layer; None means "iff ``norm_first``" (a pre-norm
            stack needs it; ``torch.nn.Transformer`` adds one to post-norm stacks as well).
        rope: rotary position embedding in self-attention (Su et al. 2021).
        rope_base: RoPE wavelength base.
        cross_attn_init: Xavier bound of cross-attention's ``q_proj`` ``(D, D)`` and ``kv_proj``
            ``(2D, D)``: ``"split"``, each matrix its own (what every recorded translation run
            used), or ``"fused"``, that of the ``(3D, D)`` matrix they split from, as
            ``torch.nn.Transformer``'s ``in_proj_weight`` and fairseq's per-matrix gain
            ``1/sqrt(2)`` (:func:`tx_suite.core.init.xavier_init_`).
        skip_padding: with a key padding mask of >= 5 % padding, run the projections and
            feed-forward blocks on the real tokens only (:mod:`tx_suite.core.packing`): same
            real-token outputs, less work. Off: every row is computed, as ``torch.nn.Transformer``
            does in training.

    Raises:
        ValueError: a width or head count below 1, ``n_heads`` does not divide ``d_model``, an
            unknown ``activation`` or ``cross_attn_init``, or a dropout / drop-path rate outside [0, 1).
    """

    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation_dropout: float | None = None
    activation: str = "relu"
    norm_first: bool = False
    norm_eps: float = 1e-5
    bias: bool = True
    drop_path: float = 0.0
    final_norm: bool | None = None
    rope: bool = False
    rope_base: float = 10000.0
    skip_padding: bool = True
    cross_attn_init: str = "split"

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.cross_attn_init not in CROSS_ATTN_INITS:
            raise ValueError(f"unknown cross_attn_init {self.cross_attn_init!r}; choose one of {CROSS_ATTN_INITS}")
        for name in ("dropout", "attn_dropout", "activation_dropout", "drop_path"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def use_final_norm(self) -> bool:
        return self.norm_first if self.final_norm is None else self.final_norm

    def layer_kwargs(self) -> dict:
        """Keyword arguments shared by :class:`EncoderLayer` and :class:`DecoderLayer`."""
        return dict(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, dropout=self.dropout,
            attn_dropout=self.attn_dropout, activation_dropout=self.activation_dropout,
            activation=self.activation, norm_first=self.norm_first,
            norm_eps=self.norm_eps, bias=self.bias,
        )
