"""The encoder-decoder equals torch.nn.Transformer with mapped weights (post- and pre-norm)."""

import pytest
import torch
from torch import nn

from reference_weights import randomize_norms_and_biases_
from tx_suite.core import EncoderDecoder, TransformerConfig, causal_mask
from tx_suite.core.torch_conversion import convert_torch_transformer


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_decoder_equals_torch_transformer(norm_first, activation):
    torch.manual_seed(0)
    d, h, ff = 32, 4, 64
    ref = nn.Transformer(d, h, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=ff, dropout=0.1,
                         activation=activation, batch_first=True, norm_first=norm_first).eval()
    randomize_norms_and_biases_(ref)
    cfg = TransformerConfig(d_model=d, n_heads=h, d_ff=ff, activation=activation, norm_first=norm_first,
                            final_norm=True)  # nn.Transformer always ends both stacks with a LayerNorm
    ours = EncoderDecoder(cfg, n_encoder_layers=2, n_decoder_layers=3).eval()
    ours.load_state_dict(convert_torch_transformer(ref.state_dict()))

    src, tgt = torch.randn(3, 9, d), torch.randn(3, 6, d)
    src_pad = torch.zeros(3, 9, dtype=torch.bool)
    src_pad[0, 7:] = True
    src_pad[2, 4:] = True
    tgt_pad = torch.zeros(3, 6, dtype=torch.bool)
    tgt_pad[1, 5:] = True
    expected = ref(src, tgt, tgt_mask=~causal_mask(6), src_key_padding_mask=src_pad,
                   tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
    got = ours(src, tgt, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad)
    real = ~tgt_pad  # torch's fast paths may leave pad rows unspecified; compare real positions
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    # the unmasked encoder path as well
    assert (ours.encode(src) - ref.encoder(src)).abs().max() <= 1e-5


def test_bias_free_transformer_loads_strictly():
    # torch's bias=False drops the LayerNorm biases too, so ours must have none to load strictly
    torch.manual_seed(0)
    ref = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True, bias=False).eval()
    randomize_norms_and_biases_(ref)
    ours = EncoderDecoder(TransformerConfig(d_model=16, n_heads=4, d_ff=32, bias=False, final_norm=True), 1, 1).eval()
    ours.load_state_dict(convert_torch_transformer(ref.state_dict()))
    src, tgt = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    assert (ours(src, tgt) - ref(src, tgt, tgt_mask=~causal_mask(4))).abs().max() <= 1e-5
