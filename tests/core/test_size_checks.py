"""Sizes below 1 are refused by name, before a modulo turns them into a ZeroDivisionError or
torch into "negative dimension" (exit 1 "internal error" from the CLI instead of a config error)."""

import pytest

from tx_suite.core import Decoder, Encoder, MultiHeadAttention, TransformerConfig


@pytest.mark.parametrize("name", ["d_model", "n_heads", "d_ff"])
@pytest.mark.parametrize("value", [0, -8])
def test_transformer_config_refuses_sizes_below_one(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be >= 1, got {value}$"):
        TransformerConfig(**{"d_model": 32, "n_heads": 4, "d_ff": 64, name: value})


def test_attention_and_stacks_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="n_heads must be >= 1"):
        MultiHeadAttention(32, 0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64)
    for stack in (Encoder, Decoder):
        with pytest.raises(ValueError, match="n_layers must be >= 0, got -1"):
            stack(cfg, -1)
        assert len(stack(cfg, 0).layers) == 0  # zero layers stay allowed (an embeddings-only baseline)
