"""The three compositions of the shared layers: encoder-decoder, encoder-only, decoder-only."""

from __future__ import annotations

from torch import Tensor, nn

from .config import TransformerConfig
from .decoder import Decoder
from .encoder import Encoder
from .kv_cache import DecoderCache


class EncoderDecoder(nn.Module):
    """Encoder-decoder Transformer over embedded inputs (Vaswani et al. 2017, §3, Figure 1).

    Every decoder layer cross-attends to the output of the top encoder layer (the "memory").

    Args:
        cfg: layer hyper-parameters shared by both stacks.
        n_encoder_layers: encoder depth.
        n_decoder_layers: decoder depth.
    """

    def __init__(self, cfg: TransformerConfig, n_encoder_layers: int = 6, n_decoder_layers: int = 6) -> None:
        super().__init__()
        self.encoder = Encoder(cfg, n_encoder_layers)
        self.decoder = Decoder(cfg, n_decoder_layers, cross_attention=True)

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """``src`` ``(B, S, D)`` -> memory ``(B, S, D)``; mask ``(B, S)`` True = padding."""
        return self.encoder(src, key_padding_mask=src_key_padding_mask)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        memory_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """``tgt`` ``(B, T, D)`` (new positions only with ``cache``) -> ``(B, T, D)``, causal."""
        return self.decoder(
            tgt, memory, key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask, is_causal=True, cache=cache,
        )

    def new_cache(self) -> DecoderCache:
        return self.decoder.new_cache()

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced pass: ``src`` ``(B, S, D)``, ``tgt`` ``(B, T, D)`` -> ``(B, T, D)``."""
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt, memory, memory_key_padding_mask=src_key_padding_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask)


class EncoderOnly(Encoder):
    """Encoder-only composition (BERT, ViT: Dosovitskiy et al. 2020, §3.1): bidirectional
    self-attention over the whole input. Same layers and arguments as :class:`Encoder`."""


class DecoderOnly(Decoder):
    """Decoder-only composition (GPT; DALL-E's transformer, Ramesh et al. 2021, §2.2): causal
    self-attention without cross-attention, with the same KV cache as :class:`Decoder`.

    Args:
        cfg: layer hyper-parameters.
        n_layers: depth.
    """

    def __init__(self, cfg: TransformerConfig, n_layers: int = 6) -> None:
        super().__init__(cfg, n_layers, cross_attention=False)
