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
    """

    def __init__(self, cfg: TransformerConfig, n_layers: int = 6) -> None:
        super().__init__()
        self.cfg = cfg
        rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base) if cfg.rope else None
        self.layers = nn.ModuleList(
            EncoderLayer(**cfg.layer_kwargs(), drop_path=p, rope=rope)
            for p in drop_path_rates(cfg.drop_path, n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.use_final_norm else nn.Identity()
        xavier_init_(self)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """``x`` ``(B, S, D)``; ``key_padding_mask`` ``(B, S)`` bool, True = padding."""
        real_index = real_token_index(key_padding_mask) if self.cfg.skip_padding else None
        attn_mask, is_causal = build_attn_mask(x.size(1), x.size(1), key_padding_mask, attn_mask, is_causal, x.device)
        for layer in self.layers:
            x = layer(x, attn_mask=attn_mask, is_causal=is_causal, real_index=real_index)
        return self.norm(x)
