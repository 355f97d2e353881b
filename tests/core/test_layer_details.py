"""Details a wrong implementation could get past the equivalence tests: default final norm, init,
activations, dropout placement and scale, drop path, RoPE frequencies and direction, <boi> position."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tx_suite.core import Decoder, DecoderOnly, Encoder, TransformerConfig
from tx_suite.core.drop_path import DropPath
from tx_suite.core.feed_forward import ACTIVATIONS, FeedForward
from tx_suite.core.positional.rotary import RotaryEmbedding

CFG = dict(d_model=16, n_heads=2, d_ff=32, dropout=0.0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_final_norm_defaults_to_pre_norm(norm_first):
    # A pre-norm stack ends unnormalised without it (Xiong et al. 2020); post-norm ends normed already.
    for stack in (Encoder(TransformerConfig(**CFG, norm_first=norm_first), 2),
                  Decoder(TransformerConfig(**CFG, norm_first=norm_first), 2)):
        assert isinstance(stack.norm, nn.LayerNorm) == norm_first


def test_linear_layers_start_xavier_uniform_with_zero_bias():
    torch.manual_seed(0)
    enc = Encoder(TransformerConfig(**CFG), 2)
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= 4
    for m in linears:
        bound = math.sqrt(6.0 / (m.in_features + m.out_features))  # Glorot & Bengio 2010, Eq. 16
        assert m.bias is None or not m.bias.any()
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.8 * bound


def test_cross_attention_init_split_or_fused():
    """"split": q_proj (D, D) and kv_proj (2D, D) each get their own Xavier bound; "fused": the
    bound of torch.nn.MultiheadAttention's (3D, D) in_proj_weight (fairseq's gain 1/sqrt(2))."""
    d = 64
    fused_bound = math.sqrt(6.0 / (d + 3 * d))
    for mode, q_bound, kv_bound in (("split", math.sqrt(6.0 / (2 * d)), math.sqrt(6.0 / (3 * d))),
                                    ("fused", fused_bound, fused_bound)):
        torch.manual_seed(0)
        dec = Decoder(TransformerConfig(d_model=d, n_heads=4, d_ff=128, cross_attn_init=mode), 2)
        for layer in dec.layers:
            for w, bound in ((layer.cross_attn.q_proj.weight, q_bound), (layer.cross_attn.kv_proj.weight, kv_bound)):
                assert 0.95 * bound < w.abs().max() <= bound, mode
            assert not layer.cross_attn.q_proj.bias.any() and not layer.cross_attn.kv_proj.bias.any()
            # self-attention is fused either way: the same bound as torch's in_proj_weight
            assert 0.95 * fused_bound < layer.self_attn.qkv_proj.weight.abs().max() <= fused_bound
    with pytest.raises(ValueError, match="cross_attn_init"):
        TransformerConfig(cross_attn_init="xavier")


def test_activations_are_the_named_functions():
    x = torch.linspace(-4, 4, 101)
    refs = {"relu": F.relu(x), "gelu": F.gelu(x), "gelu_tanh": F.gelu(x, approximate="tanh"), "silu": x * torch.sigmoid(x)}
    assert set(ACTIVATIONS) == set(refs)
    for name, ref in refs.items():
        torch.testing.assert_close(ACTIVATIONS[name](x), ref, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(ACTIVATIONS["gelu"](x), ACTIVATIONS["gelu_tanh"](x), atol=1e-5)


def test_feed_forward_dropout_is_on_the_inner_activations():
    # fc2(dropout(act(fc1(x)))) (Eq. 2 + §5.4): the dropout sees d_ff features, the output no zeros.
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, dropout=0.5).train()
    seen = []
    ffn.dropout.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    y = ffn(torch.randn(64, 8))
    assert seen == [32] and (y != 0).all()
    # ... and after the activation: with GELU, dropout before it would differ (with ReLU it commutes)
    ffn = FeedForward(8, 32, dropout=0.5, activation="gelu").train()
    x = torch.randn(64, 8)
    inputs = []
    ffn.dropout.register_forward_hook(lambda m, inp, out: inputs.append(inp[0]))
    ffn(x)
    torch.testing.assert_close(inputs[0], F.gelu(ffn.fc1(x)))


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_drop_path_drops_whole_samples_at_rate_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.full((20000, 3, 4), 2.0)
    y = DropPath(p).train()(x)
    dropped = (y == 0).all(-1).all(-1)
    assert ((y == 0) | (y == 2.0 / (1 - p))).all()  # a sample is dropped or kept whole, scaled
    assert abs(dropped.float().mean().item() - p) < 0.015
    assert abs(y.mean().item() - 2.0) < 0.05  # the expectation is kept (inverted form)


def test_attention_dropout_is_off_in_eval():
    torch.manual_seed(0)
    enc = Encoder(TransformerConfig(**CFG, attn_dropout=0.5), 2).eval()
    x = torch.randn(2, 5, 16)
    assert torch.equal(enc(x), enc(x))
    assert not torch.equal(enc.train()(x), enc(x))


@pytest.mark.parametrize("stack_cls", [Encoder, Decoder])
def test_activation_dropout_is_separate_from_residual_dropout(stack_cls):
    """fairseq's ``--dropout 0.3`` leaves the FFN's inner activations undropped
    (``activation_dropout`` 0); None keeps torch.nn.Transformer's one rate for both."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    cfg = {**CFG, "dropout": 0.5}
    fairseq_like = stack_cls(TransformerConfig(**cfg, activation_dropout=0.0), 1).train()
    torch_like = stack_cls(TransformerConfig(**cfg), 1).train()
    for stack, rate in ((fairseq_like, 0.0), (torch_like, 0.5)):
        layer = stack.layers[0]
        assert layer.dropout.p == 0.5  # residual dropout unchanged
        h = torch.relu(layer.ffn.fc1(x))
        # the inner activations are dropped (zeros beyond ReLU's) only with a non-zero rate
        inner = []
        layer.ffn.fc2.register_forward_pre_hook(lambda m, args: inner.append(args[0]))
        layer.ffn(x)
        extra_zeros = ((inner[0] == 0) & (h != 0)).float().mean().item()
        assert (extra_zeros > 0.1) == (rate > 0), (stack_cls, rate, extra_zeros)
    with pytest.raises(ValueError, match="activation_dropout"):
        TransformerConfig(**CFG, activation_dropout=1.0)


def test_decoder_turns_packing_off_with_drop_path(monkeypatch):
    """As the encoder's test in test_packing: DropPath drops whole samples, packed rows would not be."""
    import tx_suite.core.decoder_layer as layer_module

    seen = []
    original = layer_module.on_real_tokens
    monkeypatch.setattr(layer_module, "on_real_tokens", lambda x, index, fn: seen.append(index) or original(x, index, fn))
    torch.manual_seed(0)
    gpt = DecoderOnly(TransformerConfig(**CFG, drop_path=0.5), 1)
    x, pad = torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 2:] = True
    gpt.train()(x, key_padding_mask=pad)
    gpt.eval()(x, key_padding_mask=pad)
    assert seen[0] is None and seen[-1] is not None


def test_zero_layer_encoder_honours_n_outputs():
    enc = Encoder(TransformerConfig(**CFG), 0)
    assert enc(torch.randn(2, 5, 16), n_outputs=1).shape == (2, 1, 16)


@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_rope_frequencies_follow_roformer_and_the_config(base):
    dh = 8
    expected = base ** (-torch.arange(0, dh, 2, dtype=torch.float32) / dh)  # RoFormer Eq. 15
    torch.testing.assert_close(RotaryEmbedding(dh, base).inv_freq, expected)
    for stack in (Encoder(TransformerConfig(**CFG, rope=True, rope_base=base), 1),
                  Decoder(TransformerConfig(**CFG, rope=True, rope_base=base), 1)):
        torch.testing.assert_close(stack.layers[0].self_attn.rope.inv_freq, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_angles_stay_exact_after_casting_the_module(dtype):
    # A module cast with .to(dtype) must rotate position 2047 by the float32 angle; with its
    # frequencies rounded to bf16 the rotation was ~20 % off there (0.18 % is the input rounding).
    rope = RotaryEmbedding(64).to(dtype)
    q = torch.randn(1, 1, 2048, 64)
    rotated, _ = rope(q.to(dtype), q.to(dtype))
    expected, _ = RotaryEmbedding(64)(q, q)
    err = (rotated[..., -1, :].float() - expected[..., -1, :]).norm() / expected[..., -1, :].norm()
    assert err < 0.01


def test_rope_rotates_by_plus_m_theta():
    # Position 1, first pair (x_0, x_2) with theta_0 = 1: (1, 0) -> (cos 1, sin 1), as in
    # RoFormer Eq. 13 and the GPT-NeoX/LLaMA weights it must stay compatible with.
    rope = RotaryEmbedding(4)
    q = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    q_rot, _ = rope(q, q, offset=1)
    torch.testing.assert_close(q_rot.flatten(), torch.tensor([math.cos(1.0), 0.0, math.sin(1.0), 0.0]))
