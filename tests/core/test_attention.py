"""Scaled dot-product and multi-head attention against the formula and torch.nn.MultiheadAttention."""

import math

import pytest
import torch
from torch import nn

from reference_weights import randomize_norms_and_biases_
from tx_suite.core import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from tx_suite.core.torch_conversion import convert_torch_mha

B, H, T, S, DH = 3, 4, 6, 5, 8


def naive_attention(q, k, v, allowed=None):
    """Eq. 1 in float64 with an explicit loop-free softmax; ``allowed`` True = may attend."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, H, T, DH, generator=g), torch.randn(B, H, S, DH, generator=g),
            torch.randn(B, H, S, DH, generator=g))


@pytest.mark.parametrize("need_weights", [False, True])
def test_sdpa_matches_formula(qkv, need_weights):
    q, k, v = qkv
    out, w = scaled_dot_product_attention(q, k, v, need_weights=need_weights)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v), atol=1e-5, rtol=0)
    if need_weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))


def test_sdpa_weights_path_equals_fast_path_with_masks(qkv):
    q, k, v = qkv
    allowed = torch.rand(B, 1, T, S, generator=torch.Generator().manual_seed(1)) > 0.3
    allowed[..., 0] = True  # every query keeps one key
    additive = torch.zeros(B, 1, T, S).masked_fill(~allowed, float("-inf"))
    ref = naive_attention(q, k, v, allowed)
    for mask in (allowed, additive):
        fast, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        slow, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
        torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)
        assert (w[~allowed.expand_as(w)] == 0).all()


def test_is_causal_is_bottom_right_aligned(qkv):
    q, k, v = qkv  # Tq = 6 > Tk = 5 is illegal; use the last 3 queries against 5 keys
    q = q[:, :, :3]
    expected = naive_attention(q, k, v, causal_mask(3, S))
    assert causal_mask(3, S).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    for need_weights in (False, True):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_fully_masked_rows_give_zeros_on_both_paths(qkv):
    q, k, v = qkv
    mask = torch.ones(B, 1, T, S, dtype=torch.bool)
    mask[:, :, 2] = False
    fast, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    slow, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
    assert fast[:, :, 2].abs().max() == 0 and slow[:, :, 2].abs().max() == 0 and w[:, :, 2].abs().max() == 0
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_keep_gradients_finite_on_the_weights_path(qkv, kind):
    # softmax over an all -inf row is NaN; it must not reach q, k or v through the backward pass
    q, k, v = (t.clone().requires_grad_() for t in qkv)
    allowed = torch.ones(B, 1, T, S, dtype=torch.bool)
    allowed[:, :, 2] = False
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    out, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
    out.sum().backward()
    assert all(t.grad.isfinite().all() for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_path_takes_a_float32_mask_with_half_inputs(qkv, dtype):
    q, k, v = (t.to(dtype) for t in qkv)
    bias = torch.randn(1, H, T, S, generator=torch.Generator().manual_seed(3))  # float32, as an ALiBi-style bias is
    fast, _ = scaled_dot_product_attention(q, k, v, attn_mask=bias)
    slow, w = scaled_dot_product_attention(q, k, v, attn_mask=bias, need_weights=True)
    assert slow.dtype == w.dtype == dtype
    torch.testing.assert_close(slow.float(), fast.float(), atol=2e-2, rtol=0)


def test_weights_path_does_not_overflow_in_float16():
    # |q|, |k| ~ 40 at Dk = 64: q.k = 1e5 overflows float16 (max 65504) unless the scores are
    # accumulated in float32, as the fused kernels do.
    q = torch.full((1, 1, 2, 64), 40.0, dtype=torch.float16)
    k = q.clone()
    k[..., 1, :] = 39.0
    v = torch.randn(1, 1, 2, 64, generator=torch.Generator().manual_seed(0)).half()
    fast, _ = scaled_dot_product_attention(q, k, v)
    slow, w = scaled_dot_product_attention(q, k, v, need_weights=True)
    assert torch.isfinite(slow).all()
    torch.testing.assert_close(slow.float(), fast.float(), atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_path_keeps_large_finite_mask_values_finite(qkv, dtype):
    # -1e9 on every key of row 0 is a large but finite bias: the kernels attend uniformly there.
    # Rounded to float16 it became -inf and the row came out as a zero "fully masked" row.
    q, k, v = (t.to(dtype) for t in qkv)
    bias = torch.zeros(1, 1, T, S)
    bias[..., 0, :] = -1e9
    bias[..., 1:, 0] = -1e9
    fast, _ = scaled_dot_product_attention(q, k, v, attn_mask=bias)
    slow, _ = scaled_dot_product_attention(q, k, v, attn_mask=bias, need_weights=True)
    assert slow[..., 0, :].abs().sum() > 0
    torch.testing.assert_close(slow.float(), fast.float(), atol=2e-2, rtol=0)


def test_weights_path_runs_on_the_meta_device():
    q = torch.empty(2, 4, 5, 8, device="meta")
    out, w = scaled_dot_product_attention(q, q, q, need_weights=True)
    assert out.shape == (2, 4, 5, 8) and w.shape == (2, 4, 5, 5)


def _pair(d_model=32, n_heads=4, cross=False):
    torch.manual_seed(0)
    ref = randomize_norms_and_biases_(nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval())
    ours = MultiHeadAttention(d_model, n_heads, cross_attention=cross).eval()
    ours.load_state_dict(convert_torch_mha(ref.state_dict(), cross_attention=cross))
    return ref, ours


@pytest.mark.parametrize("masks", ["none", "padding", "attn_mask", "both", "float_and_padding", "causal"])
def test_self_attention_equals_torch_mha(masks):
    ref, ours = _pair()
    x = torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    pad[2, 3:] = True
    blocked = torch.rand(7, 7, generator=torch.Generator().manual_seed(2)) > 0.7  # True = blocked (torch)
    blocked.fill_diagonal_(False)
    kw_ref, kw_ours = {}, {}
    if masks in ("padding", "both"):
        kw_ref["key_padding_mask"] = kw_ours["key_padding_mask"] = pad
    if masks in ("attn_mask", "both"):
        kw_ref["attn_mask"], kw_ours["attn_mask"] = blocked, ~blocked  # opposite bool conventions
    if masks == "float_and_padding":  # an additive mask merged with a bool padding mask
        bias = torch.randn(7, 7, generator=torch.Generator().manual_seed(4)).masked_fill(blocked, float("-inf"))
        kw_ref["attn_mask"] = kw_ours["attn_mask"] = bias
        kw_ref["key_padding_mask"] = kw_ours["key_padding_mask"] = pad
    if masks == "causal":
        kw_ref["attn_mask"] = ~causal_mask(7)
        kw_ours["is_causal"] = True
    expected, w_ref = ref(x, x, x, average_attn_weights=False, **kw_ref)
    got, w = ours(x, need_weights=True, **kw_ours)
    assert (got - expected).abs().max() <= 1e-5
    assert (w - w_ref).abs().max() <= 1e-5
    fast, _ = ours(x, **kw_ours)
    assert (fast - expected).abs().max() <= 1e-5


def test_cross_attention_equals_torch_mha():
    ref, ours = _pair(cross=True)
    x, memory = torch.randn(2, 4, 32), torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    expected, _ = ref(x, memory, memory, key_padding_mask=pad)
    got, _ = ours(x, memory, key_padding_mask=pad)
    assert (got - expected).abs().max() <= 1e-5


def test_mha_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="memory"):
        MultiHeadAttention(32, 4, cross_attention=True)(torch.randn(1, 2, 32))


@pytest.mark.parametrize("t", [2, 3])
def test_short_causal_inputs_do_not_see_the_future(t):
    # A decoder's first steps without a cache see 2-3 positions: causality must hold there too.
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, t, DH, generator=g) for _ in range(3))
    expected = naive_attention(q, k, v, causal_mask(t))
    for need_weights in (False, True):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_weights_path_applies_attention_dropout(qkv):
    # The returned weights are post-dropout (as nn.MultiheadAttention's are not, but the output
    # must be the one the fast path would give): some are zeroed, the kept ones scaled by 1/(1-p).
    q, k, v = qkv
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True)
    _, clean = scaled_dot_product_attention(q, k, v, need_weights=True)
    dropped = w == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(w[~dropped], 2 * clean[~dropped])
    torch.testing.assert_close(out, w @ v)


@pytest.mark.parametrize("is_causal", [False, True])
def test_explicit_scale_is_used_on_every_path(qkv, is_causal):
    # q_len == k_len so that the causal case takes the kernel's own-mask shortcut as well
    q, k, v = qkv[0][:, :, :S], qkv[1], qkv[2]
    allowed = causal_mask(S) if is_causal else None
    ref = naive_attention(q * math.sqrt(DH) * 0.3, k, v, allowed)  # scores q.k * 0.3
    for need_weights in (False, True):
        out, _ = scaled_dot_product_attention(q, k, v, is_causal=is_causal, need_weights=need_weights, scale=0.3)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("need_weights", [False, True])
def test_integer_masks_are_refused_on_both_paths(qkv, need_weights):
    """The weights path added a 0/1 integer mask to the scores as if it were additive; the fast
    path's kernel refuses it. Both now raise the same TypeError."""
    q, k, v = qkv
    keep = torch.rand(q.size(-2), k.size(-2)) > 0.5
    for dtype in (torch.long, torch.int32, torch.uint8):
        with pytest.raises(TypeError, match="attn_mask must be bool"):
            scaled_dot_product_attention(q, k, v, attn_mask=keep.to(dtype), need_weights=need_weights)


@pytest.mark.parametrize("extra", ["key_padding_mask", "is_causal", "encoder"])
def test_integer_masks_are_refused_after_merging_too(extra):
    """With a padding mask or stack-level causality the masks are merged before attention; an
    integer mask used to fail there with "value cannot be converted to type int64_t"."""
    from tx_suite.core import Encoder, TransformerConfig

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    keep = (torch.rand(5, 5) > 0.3).long()
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        if extra == "encoder":
            Encoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32), 1)(x, key_padding_mask=pad, attn_mask=keep)
        else:
            mha = MultiHeadAttention(16, 2)
            kwargs = {"key_padding_mask": pad} if extra == "key_padding_mask" else {"is_causal": True}
            mha(x, attn_mask=keep, **kwargs)
