"""Skipping padded rows in the projections and feed-forward blocks (tx_suite.core.packing) leaves
every real-token output and every gradient as the dense computation gives them."""

import pytest
import torch

from tx_suite.core import Encoder, EncoderDecoder, TransformerConfig
from tx_suite.core.packing import real_token_index


def test_real_token_index_lists_real_rows_and_skips_nearly_unpadded_batches():
    pad = torch.tensor([[False, False, True, True], [False, True, True, True]])
    assert real_token_index(pad).tolist() == [0, 1, 4]
    assert real_token_index(None) is None
    almost_full = torch.zeros(2, 40, dtype=torch.bool)
    almost_full[0, -1] = True  # 1.25 % padding: gathering would cost more than it saves
    assert real_token_index(almost_full) is None


def _run(model, src, tgt, src_pad, tgt_pad, packed: bool):
    model.encoder.cfg.skip_padding = packed  # one config object shared by both stacks
    model.zero_grad()
    out = model(src, tgt, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad)
    out[~tgt_pad].pow(2).sum().backward()  # a loss on real targets only, as translation's
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("norm_first", [False, True])
def test_packed_layers_equal_dense_layers_in_training(norm_first):
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, dropout=0.0, norm_first=norm_first, final_norm=True)
    model = EncoderDecoder(cfg, 2, 2).train()
    src, tgt = torch.randn(3, 9, 32), torch.randn(3, 7, 32)
    src_pad = torch.zeros(3, 9, dtype=torch.bool)
    src_pad[0, 5:] = True
    src_pad[2, 2:] = True
    tgt_pad = torch.zeros(3, 7, dtype=torch.bool)
    tgt_pad[1, 3:] = True
    assert real_token_index(src_pad) is not None and real_token_index(tgt_pad) is not None  # packing runs
    packed, packed_grads = _run(model, src, tgt, src_pad, tgt_pad, True)
    dense, dense_grads = _run(model, src, tgt, src_pad, tgt_pad, False)
    real = ~tgt_pad
    assert (packed[real] - dense[real]).abs().max() <= 1e-5
    for name, g in dense_grads.items():
        assert (packed_grads[name] - g).abs().max() <= 1e-5, name
    # The pad rows differ (they skip the feed-forward block): the packed path did run.
    assert (packed[~real] - dense[~real]).abs().max() > 1e-3


def test_drop_path_turns_packing_off_for_the_feed_forward_block(monkeypatch):
    """DropPath drops whole samples; on packed rows it would drop single tokens instead."""
    import tx_suite.core.encoder_layer as layer_module

    seen = []
    original = layer_module.on_real_tokens
    monkeypatch.setattr(layer_module, "on_real_tokens", lambda x, index, fn: seen.append(index) or original(x, index, fn))
    torch.manual_seed(0)
    enc = Encoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32, dropout=0.0, drop_path=0.5), 1)
    x, pad = torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 2:] = True
    enc.train()(x, key_padding_mask=pad)
    enc.eval()(x, key_padding_mask=pad)  # DropPath is inactive in eval: packing is back on
    assert seen[0] is None and seen[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_packed_blocks_see_only_the_real_rows():
    """The equality tests above also pass when nothing is packed; here every position-wise block
    (projections, feed-forward) must receive the real rows alone, memory side included."""
    torch.manual_seed(0)
    model = EncoderDecoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32, dropout=0.0), 1, 1).eval()
    src, tgt = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    src_pad, tgt_pad = torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)
    src_pad[1, 2:] = True  # 8 real source tokens of 12
    tgt_pad[0, 3:] = True  # 8 real target tokens of 10
    enc, dec = model.encoder.layers[0], model.decoder.layers[0]
    blocks = {"enc.qkv": (enc.self_attn.qkv_proj, 8), "enc.ffn": (enc.ffn.fc1, 8),
              "dec.qkv": (dec.self_attn.qkv_proj, 8), "dec.q": (dec.cross_attn.q_proj, 8),
              "dec.kv": (dec.cross_attn.kv_proj, 8), "dec.ffn": (dec.ffn.fc1, 8)}
    seen = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, tuple(args[0].shape)))
             for name, (m, _) in blocks.items()]
    model(src, tgt, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad)
    for h in hooks:
        h.remove()
    assert seen == {name: (n, 16) for name, (_, n) in blocks.items()}
