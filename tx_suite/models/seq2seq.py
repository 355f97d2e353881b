"""Encoder-decoder Transformer for translation (Vaswani et al. 2017): token embeddings + core + head."""

from __future__ import annotations

from torch import Tensor, nn

from tx_suite.core import DecoderCache, EncoderDecoder, TransformerConfig
from tx_suite.frontends import TokenEmbedding


class Seq2SeqTransformer(nn.Module):
    """Token ids in, next-token logits out.

    ``src`` is embedded by :class:`TokenEmbedding` (scaled by ``sqrt(d_model)``, sinusoidal
    positions, §3.4-3.5), encoded by :class:`tx_suite.core.EncoderDecoder`, and the decoder output
    is projected to the vocabulary. Options from §3.4: one embedding matrix for source and target
    (``share_embeddings``, sensible with a joint BPE) and an output projection tied to the target
    embedding (``tie_output``, Press & Wolf 2017).

    Args:
        vocab_size: size ``V`` of the (joint) vocabulary; with ``share_embeddings=False`` both
            sides still use ids below ``V``.
        d_model, n_heads, d_ff, dropout, attn_dropout, activation_dropout, activation, norm_first:
            see :class:`tx_suite.core.TransformerConfig`.
        n_encoder_layers, n_decoder_layers: stack depths.
        pad_id: padding id (its embedding row starts at zero and gets no gradient from the lookup;
            with ``tie_output`` the output projection still trains it, harmless as padded keys are masked).
        share_embeddings: one embedding matrix for source and target.
        tie_output: output projection weight = target embedding matrix.
        pos_encoding: ``"sinusoidal"``, ``"sinusoidal_fairseq"`` or ``"learned"`` (see
            :class:`TokenEmbedding`).
        cross_attn_init: see :class:`tx_suite.core.TransformerConfig`.
        max_len: positions precomputed (sinusoidal grows on demand; learned is a hard limit).
    """

    def __init__(self, vocab_size: int, d_model: int = 512, n_heads: int = 8, d_ff: int = 2048,
                 n_encoder_layers: int = 6, n_decoder_layers: int = 6, dropout: float = 0.1,
                 attn_dropout: float = 0.0, activation_dropout: float | None = None,
                 activation: str = "relu", norm_first: bool = False, pad_id: int = 0,
                 share_embeddings: bool = True, tie_output: bool = True,
                 pos_encoding: str = "sinusoidal", max_len: int = 1024,
                 cross_attn_init: str = "split") -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_len = max_len
        #: Target positions a learned table can embed; sinusoidal positions grow on demand (None).
        self.max_positions = max_len if pos_encoding == "learned" else None
        cfg = TransformerConfig(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
                                attn_dropout=attn_dropout, activation_dropout=activation_dropout,
                                activation=activation, norm_first=norm_first,
                                cross_attn_init=cross_attn_init)
        def embedding() -> TokenEmbedding:
            return TokenEmbedding(vocab_size, d_model, pad_id=pad_id, pos_encoding=pos_encoding,
                                  max_len=max_len, dropout=dropout)
        self.src_embed = embedding()
        self.tgt_embed = self.src_embed if share_embeddings else embedding()
        self.transformer = EncoderDecoder(cfg, n_encoder_layers, n_decoder_layers)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_output:
            self.lm_head.weight = self.tgt_embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=d_model**-0.5)

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """``src`` ``(B, S)`` long -> memory ``(B, S, D)``; mask ``(B, S)`` True = padding."""
        return self.transformer.encode(self.src_embed(src), src_key_padding_mask)

    def decode(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
               cache: DecoderCache | None = None) -> Tensor:
        """Logits ``(B, T, V)`` for target prefix ids ``tgt`` ``(B, T)`` against ``memory`` ``(B, S, D)``.

        With ``cache`` (from :meth:`new_cache`), ``tgt`` holds only the new positions and positions
        continue at ``cache.length``. No target padding mask is needed: targets are right-padded,
        so the causal mask already hides padding from every real position, and the loss ignores
        the padded ones (this keeps the fused causal attention kernel).
        """
        return self.lm_head(self.decode_features(tgt, memory, memory_key_padding_mask, cache))

    def decode_features(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
                        cache: DecoderCache | None = None) -> Tensor:
        """As :meth:`decode`, but the decoder's hidden states ``(B, T, D)`` before :attr:`lm_head`."""
        offset = cache.length if cache is not None else 0
        return self.transformer.decode(self.tgt_embed(tgt, offset=offset), memory,
                                       memory_key_padding_mask=memory_key_padding_mask, cache=cache)

    def new_cache(self) -> DecoderCache:
        """Empty KV cache for incremental decoding (see :meth:`decode`)."""
        return self.transformer.new_cache()

    def forward(self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: ``src`` ``(B, S)``, ``tgt`` ``(B, T)`` (BOS-prefixed) -> logits ``(B, T, V)``."""
        return self.lm_head(self.forward_features(src, tgt, src_key_padding_mask))

    def forward_features(self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing up to the decoder output: hidden states ``(B, T, D)`` before :attr:`lm_head`.

        Training projects only the non-padding rows (``lm_head(h[keep])``): with a vocabulary of
        8000 the ``(B, T, V)`` logits are a large share of a small model's memory traffic, and no
        padded position needs them (length bucketing keeps padding low, ~4 % of Multi30k targets).
        """
        memory = self.encode(src, src_key_padding_mask)
        return self.decode_features(tgt, memory, src_key_padding_mask)
