"""Transformer decoder stack (Vaswani et al. 2017, §3.1), with a KV cache for incremental decoding."""

from __future__ import annotations

from torch import Tensor, nn

from .config import TransformerConfig
from .decoder_layer import DecoderLayer
from .init import drop_path_rates, xavier_init_
from .kv_cache import DecoderCache, KVCache, LayerCache
from .masks import build_attn_mask, padding_to_attn_mask
from .packing import real_token_index
from .positional.rotary import RotaryEmbedding


class Decoder(nn.Module):
    """``n_layers`` :class:`DecoderLayer`s, plus a final LayerNorm when ``cfg.use_final_norm``.

    Args:
        cfg: shared layer hyper-parameters.
        n_layers: depth ``N``.
        cross_attention: layers attend to an encoder memory (encoder-decoder); False gives the
            decoder-only (GPT-style) stack.

    Shapes: ``x`` ``(B, T, D)``, ``memory`` ``(B, S, D)`` -> ``(B, T, D)``.

    Raises:
        ValueError: ``n_layers`` < 0 (0 is allowed: no layers, only the final norm).
    """

    def __init__(self, cfg: TransformerConfig, n_layers: int = 6, cross_attention: bool = True) -> None:
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.cfg = cfg
        self.cross_attention = cross_attention
        rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base) if cfg.rope else None
        self.layers = nn.ModuleList(
            DecoderLayer(**cfg.layer_kwargs(), drop_path=p, rope=rope, cross_attention=cross_attention)
            for p in drop_path_rates(cfg.drop_path, n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias) if cfg.use_final_norm else nn.Identity()
        xavier_init_(self, cfg.cross_attn_init)

    def new_cache(self) -> DecoderCache:
        """An empty cache for incremental decoding with this stack."""
        return DecoderCache([
            LayerCache(KVCache(), KVCache() if self.cross_attention else None) for _ in self.layers
        ])

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = True,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Decode ``x`` ``(B, T, D)`` against ``memory`` ``(B, S, D)``.

        With ``cache`` (from :meth:`new_cache`), ``x`` holds only the new positions; earlier
        keys/values come from the cache, which is updated in place, and the output equals the
        matching rows of a full forward pass. The caller offsets positions by ``cache.length``.

        Args:
            key_padding_mask: ``(B, T)`` bool, True = padding (new positions only with a cache).
            memory_key_padding_mask: ``(B, S)`` bool, True = padding.
            attn_mask: extra self-attention mask (bool True = may attend, or float).
            is_causal: causal self-attention (default True).
        """
        memory_mask = real_index = memory_real_index = None
        if cache is None:
            if self.cfg.skip_padding:
                real_index = real_token_index(key_padding_mask)
            if memory is not None and self.cfg.skip_padding:
                memory_real_index = real_token_index(memory_key_padding_mask)
            # Training / full passes: fold the masks once for all layers.
            attn_mask, is_causal = build_attn_mask(x.size(1), x.size(1), key_padding_mask, attn_mask, is_causal, x.device)
            if memory_key_padding_mask is not None:
                memory_mask = padding_to_attn_mask(memory_key_padding_mask)
            key_padding_mask = memory_key_padding_mask = None
        # With a cache, padding masks go to each layer's KVCache, which keeps them for later steps.
        for i, layer in enumerate(self.layers):
            x = layer(
                x, memory, key_padding_mask=key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                attn_mask=attn_mask, memory_mask=memory_mask, is_causal=is_causal,
                cache=cache.layers[i] if cache is not None else None, real_index=real_index,
                memory_real_index=memory_real_index,
            )
        if cache is not None:
            cache.length += x.size(1)
        return self.norm(x)
