"""The shared Transformer core: plain ``nn.Module``s over embedded ``(B, T, D)`` inputs.

Vaswani et al. 2017 (attention, layers, stacks, sinusoidal positions); pre-norm as in Xiong et
al. 2020; rotary positions (Su et al. 2021); 2-D grid positions (Ramesh et al. 2021).
"""

from .attention import scaled_dot_product_attention
from .compositions import DecoderOnly, EncoderDecoder, EncoderOnly
from .config import TransformerConfig
from .decoder import Decoder
from .decoder_layer import DecoderLayer
from .drop_path import DropPath
from .dropout import Dropout
from .encoder import Encoder
from .encoder_layer import EncoderLayer
from .feed_forward import ACTIVATIONS, FeedForward, get_activation
from .kv_cache import DecoderCache, KVCache, LayerCache
from .masks import causal_mask, merge_masks, padding_to_attn_mask
from .multi_head_attention import MultiHeadAttention
from .positional import (
    Grid2DPositionalEmbedding,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from .recording import record_attention

__all__ = [
    "ACTIVATIONS", "Decoder", "DecoderCache", "DecoderLayer", "DecoderOnly", "DropPath", "Dropout", "Encoder",
    "EncoderDecoder", "EncoderLayer", "EncoderOnly", "FeedForward", "Grid2DPositionalEmbedding",
    "KVCache", "LayerCache", "LearnedPositionalEmbedding", "MultiHeadAttention", "RotaryEmbedding",
    "SinusoidalPositionalEncoding", "TransformerConfig", "causal_mask", "get_activation",
    "merge_masks", "padding_to_attn_mask", "record_attention", "scaled_dot_product_attention",
    "sinusoidal_table",
]
