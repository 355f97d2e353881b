"""TextToImageTransformer: DALL-E's decoder-only model of [text, <boi>, image tokens].

Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", Sec. 2.2: text tokens and the image's
discrete codes are concatenated into one stream and modelled autoregressively by a decoder-only
Transformer; text and image tokens have their own embeddings and (here) their own output heads.
The composition is the shared core's :class:`~tx_suite.core.DecoderOnly` over the
:class:`~tx_suite.frontends.TextImageSequence` front-end (text: :class:`TokenEmbedding`, image:
:class:`ImageTokenGrid` with 2-D row/column positions).

Where this differs from the paper: every layer uses dense causal attention (DALL-E's sparse row,
column and convolutional image-to-image masks are not implemented); padded caption positions are
masked out of attention (DALL-E instead learns a padding token for each text position, which
is attended to); and the text embedding is scaled by sqrt(d_model) as in Vaswani et al. Sec. 3.4,
so at initialisation the learned text positions (std 0.02) are small next to it. That scaling also
puts text tokens into the residual stream ~50x larger than the image codes, ``<boi>`` and the
row/column positions (all std 0.02, as GPT-style embeddings); the pre-norm layers normalise each
token before every sub-layer, but an image token's own embedding is a small part of its stream
after the first layer. The linear layers start Xavier-uniform (the core's init), not GPT-2's
N(0, 0.02). Both were kept because every recorded text-to-image result was trained with them.

The sampling interface (``new_cache``, ``prefill``, ``step``, ``next_image_logits``) is what
:mod:`tx_suite.decoding.sampling` drives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tx_suite.core import DecoderCache, DecoderOnly, TransformerConfig
from tx_suite.frontends import ImageTokenGrid, TextImageSequence, TokenEmbedding


@dataclass
class TextToImageOutput:
    """``text_logits`` ``(B, L - 1, V)`` predict text tokens ``2..L``;
    ``image_logits`` ``(B, N, K)`` predict image tokens ``1..N``."""

    text_logits: Tensor
    image_logits: Tensor


class TextToImageTransformer(nn.Module):
    """Decoder-only text-to-image Transformer.

    Args:
        text_vocab_size: caption vocabulary ``V`` (pad id included).
        text_len: fixed (padded) caption length ``L``.
        codebook_size: image codes ``K`` (the VQ-VAE codebook).
        grid_height, grid_width: image-token grid ``H x W`` (``N = H * W``).
        d_model, n_heads, d_ff, n_layers, dropout: core sizes (:class:`TransformerConfig`).
        activation, norm_first: layer flavour; pre-norm (GPT-2/DALL-E style) by default.
        pad_id: caption padding id: padded text keys are masked out of attention.
        text_pos_encoding: ``"learned"`` or ``"sinusoidal"`` positions for the text.

    Shapes: ``text`` ``(B, L)`` long, ``image_codes`` ``(B, N)`` or ``(B, H, W)`` long.
    """

    def __init__(self, text_vocab_size: int, text_len: int, codebook_size: int,
                 grid_height: int, grid_width: int, d_model: int = 128, n_heads: int = 4,
                 d_ff: int = 512, n_layers: int = 4, dropout: float = 0.1,
                 activation: str = "gelu", norm_first: bool = True, pad_id: int = 0,
                 text_pos_encoding: str = "learned"):
        super().__init__()
        self.text_len, self.pad_id = text_len, pad_id
        self.codebook_size = codebook_size
        self.grid = (grid_height, grid_width)
        text = TokenEmbedding(text_vocab_size, d_model, pad_id=pad_id, pos_encoding=text_pos_encoding,
                              max_len=text_len, dropout=dropout)
        image = ImageTokenGrid(codebook_size, d_model, grid_height, grid_width, dropout=dropout)
        self.sequence = TextImageSequence(text, image, text_len=text_len, pad_id=pad_id)
        cfg = TransformerConfig(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
                                activation=activation, norm_first=norm_first)
        self.decoder = DecoderOnly(cfg, n_layers)
        self.text_head = nn.Linear(d_model, text_vocab_size)
        self.image_head = nn.Linear(d_model, codebook_size)

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, text: Tensor, image_codes: Tensor) -> TextToImageOutput:
        """Teacher-forced pass over the whole sequence.

        The last image code is never an input (nothing follows it), so the stream is
        ``[t_1 .. t_L, <boi>, i_1 .. i_{N-1}]`` of length ``L + N``. ``image_codes`` is the
        ``(B, H, W)`` grid or its raster order ``(B, N)``.

        Raises:
            ValueError: ``image_codes`` of another grid shape or length (a transposed grid too).
        """
        if tuple(image_codes.shape[1:]) not in (self.grid, (self.num_image_tokens,)):
            raise ValueError(f"image codes must be (B, {self.grid[0]}, {self.grid[1]}) or "
                             f"(B, {self.num_image_tokens}), got {tuple(image_codes.shape)}")
        codes = image_codes.flatten(1)  # (B, H, W) -> (B, N)
        x, pad = self.sequence(text, codes[:, :-1])  # (B, L + N, D), (B, L + N)
        h = self.decoder(x, key_padding_mask=pad)
        L = self.text_len
        return TextToImageOutput(self.text_head(h[:, : L - 1]), self.image_head(h[:, L:]))

    # ---- incremental sampling (KV cache) -------------------------------------------------------

    def new_cache(self) -> DecoderCache:
        return self.decoder.new_cache()

    def prefill(self, text: Tensor, cache: DecoderCache) -> Tensor:
        """Run ``[text, <boi>]`` into an empty ``cache``; logits ``(B, K)`` of the first image token."""
        x, pad = self.sequence.embed_prefix(text)
        h = self.decoder(x, key_padding_mask=pad, cache=cache)
        return self.image_head(h[:, -1])

    def step(self, codes: Tensor, cache: DecoderCache) -> Tensor:
        """Feed the newest image codes ``(B, 1)``; logits ``(B, K)`` of the next image token.

        Raises:
            ValueError: the cache holds no prefix yet (call :meth:`prefill` first).
        """
        offset = cache.length - self.sequence.prefix_len  # raster position of `codes`
        if offset < 0:  # before prefill: the codes would be embedded at a wrapped-around position
            raise ValueError(f"step() before prefill(): the cache holds {cache.length} positions, "
                             f"the text prefix alone is {self.sequence.prefix_len}")
        h = self.decoder(self.sequence.embed_image(codes, offset), cache=cache)
        return self.image_head(h[:, -1])

    def next_image_logits(self, text: Tensor, codes: Tensor) -> Tensor:
        """Uncached: logits ``(B, K)`` of image token ``n + 1`` given ``codes`` ``(B, n)``,
        recomputing the whole prefix (the reference the cache must reproduce)."""
        x, pad = self.sequence(text, codes if codes.size(1) else None)
        h = self.decoder(x, key_padding_mask=pad)
        return self.image_head(h[:, -1])
