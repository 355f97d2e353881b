"""Transformer encoder stack (Vaswani et al. 2017, §3.1: "a stack of N = 6 identical layers")."""

from __future__ import annotations

from torch import Tensor, nn

from .config import TransformerConfig
from .encoder_layer import EncoderLayer
from .init import drop_path_rates, xavier_init_
from .masks import build_attn_mask
from .packing import real_token_index
from .positional.rotary import RotaryEmbedding


class Encoder(nn.Module):
    """``n_layers`` :class:`EncoderLayer`s, plus a final LayerNorm when ``cfg.use_final_norm``.

    Args:
        cfg: shared layer hyper-parameters.
        n_layers: depth ``N``.

    Shapes: ``(B, S, D) -> (B, S, D)``.

    Raises:
        ValueError: ``n_layers`` < 0 (0 is allowed: no layers, only the final norm).
    """

    def __init__(self, cfg: TransformerConfig, n_layers: int = 6) -> None:
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.cfg = cfg
        rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base) if cfg.rope else None
        self.layers = nn.ModuleList(
            EncoderLayer(**cfg.layer_kwargs(), drop_path=p, rope=rope)
            for p in drop_path_rates(cfg.drop_path, n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias) if cfg.use_final_norm else nn.Identity()
        xavier_init_(self)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        n_outputs: int | None = None,
    ) -> Tensor:
        """``x`` ``(B, S, D)``; ``key_padding_mask`` ``(B, S)`` bool, True = padding.

        ``n_outputs``: return only the first ``n_outputs`` positions ``(B, n_outputs, D)``, equal
        to ``forward(x)[:, :n_outputs]``; the last layer then computes queries, attention output
        and feed-forward for those rows alone (e.g. a ViT's CLS token, which is all its
        classifier reads: about 5/6 of the last layer's work is skipped at 50 tokens).

        Raises:
            ValueError: ``n_outputs`` with rotary embeddings (see :class:`MultiHeadAttention`),
                or outside ``1..S``.
        """
        if n_outputs is not None and not 1 <= n_outputs <= x.size(1):
            raise ValueError(f"n_outputs must be in 1..{x.size(1)}, got {n_outputs}")
        real_index = real_token_index(key_padding_mask) if self.cfg.skip_padding else None
        attn_mask, is_causal = build_attn_mask(x.size(1), x.size(1), key_padding_mask, attn_mask, is_causal, x.device)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and n_outputs is not None:
                x = layer(x, attn_mask=attn_mask, is_causal=is_causal, n_queries=n_outputs)
            else:
                x = layer(x, attn_mask=attn_mask, is_causal=is_causal, real_index=real_index)
        if n_outputs is not None and not self.layers:
            x = x[:, :n_outputs]
        return self.norm(x)
