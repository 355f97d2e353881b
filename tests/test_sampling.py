"""Sampling: filters, guidance, re-ranking, and cached == uncached decoding for a fixed seed."""

import pytest
import torch

from tx_suite.decoding.sampling import (
    filter_logits,
    guided_logits,
    rerank,
    sample_image_tokens,
    sample_next,
)
from tx_suite.models.text_to_image import TextToImageTransformer


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]])  # p = .087 .237 .644 .032
    inf = float("-inf")
    assert torch.equal(filter_logits(logits, top_k=2), torch.tensor([[inf, 2.0, 3.0, inf]]))
    assert torch.equal(filter_logits(logits, top_p=0.6), torch.tensor([[inf, inf, 3.0, inf]]))
    assert torch.equal(filter_logits(logits, top_p=0.85), torch.tensor([[inf, 2.0, 3.0, inf]]))
    assert torch.equal(filter_logits(logits, top_p=0.95), torch.tensor([[1.0, 2.0, 3.0, inf]]))
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)
    # Greedy at temperature 0; a top-1 filter is greedy at any temperature.
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0).item() == 2
    assert all(sample_next(logits, 5.0, top_k=1, generator=g).item() == 2 for _ in range(20))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampling_follows_the_distribution(temperature):
    p = torch.tensor([0.1, 0.2, 0.7])
    logits = torch.log(p)[None].expand(20000, 3)
    draws = sample_next(logits, temperature, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, (p.log() / temperature).softmax(0), atol=0.015)  # p^(1/T), renormalised
    # Inverse-CDF draws from given uniforms follow the same distribution.
    u = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(sample_next(logits, temperature, uniform=u), minlength=3).float() / len(u)
    assert torch.allclose(freq, (p.log() / temperature).softmax(0), atol=0.015)


def test_top_p_nucleus_is_taken_after_temperature():
    # The nucleus is that of the distribution sampled from, softmax(logits / T): at T = 2 the
    # probabilities .455 .276 .167 .102 need three tokens to reach 0.85 (at T = 1, .644 .237 two).
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]]).expand(20000, 4)
    draws = sample_next(logits, 2.0, top_p=0.85, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    kept = (logits[0] / 2.0).softmax(0) * torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert torch.allclose(freq, kept / kept.sum(), atol=0.015)


def test_guidance_formula_and_rerank():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.equal(guided_logits(cond, uncond, 1.0), cond)
    assert torch.equal(guided_logits(cond, uncond, 3.0), torch.tensor([[4.0, -2.0]]))
    # masked logits: -inf - -inf and 0 * -inf were NaN, which no sampler can draw from
    inf = float("inf")
    cond, uncond = torch.tensor([[-inf, 1.0, 2.0]]), torch.tensor([[-inf, 0.0, -inf]])
    for scale in (0.0, 1.0, 3.0):
        out = guided_logits(cond, uncond, scale)
        assert not out.isnan().any() and out[0, 0] == -inf and out[0, 2] == 2.0, (scale, out)
    cands = torch.arange(6)
    assert rerank(cands, torch.tensor([0.0, 2, 1, 5, 3, 4]), 3, keep=2).tolist() == [1, 2, 3, 5]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TextToImageTransformer(text_vocab_size=40, text_len=8, codebook_size=64, grid_height=4,
                               grid_width=4, d_model=32, n_heads=4, d_ff=64, n_layers=2).eval()
    return m.double()  # float64: no rounding can flip a sampled token between the two paths


@pytest.mark.parametrize("options", [
    dict(),
    dict(temperature=0.7, top_k=10),
    dict(top_p=0.9, cfg_scale=3.0),
])
def test_cached_sampling_equals_uncached_for_a_fixed_seed(model, options):
    text = torch.randint(3, 40, (3, 8))
    text[0, 3:] = 0  # a short caption
    text[2] = 0      # the empty caption
    null = torch.zeros(8, dtype=torch.long)
    kw = dict(options, null_text=null)
    cached = sample_image_tokens(model, text, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    uncached = sample_image_tokens(model, text, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    assert cached.shape == (3, 16) and torch.equal(cached, uncached)
    other = sample_image_tokens(model, text, generator=torch.Generator().manual_seed(8), **kw)
    assert not torch.equal(cached, other)  # the seed matters, so equality above is not vacuous
    # One generator per caption: cached == uncached, and each caption draws as it would alone.
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    per_row = sample_image_tokens(model, text, use_cache=True, generator=gens(), **kw)
    assert torch.equal(per_row, sample_image_tokens(model, text, use_cache=False, generator=gens(), **kw))
    for i in range(3):
        alone = sample_image_tokens(model, text[i:i + 1], generator=[torch.Generator().manual_seed(i)], **kw)
        assert torch.equal(alone[0], per_row[i])
    reseeded = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    assert not torch.equal(per_row, sample_image_tokens(model, text, generator=reseeded, **kw))


def test_per_caption_generators_draw_fresh_randomness_each_step(model):
    # At a huge temperature every code is about equally likely, so a caption's 16 codes drawn with
    # its own generator vary as 16 uniform draws over 64 codes do (not one code repeated).
    text = torch.randint(3, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    codes = sample_image_tokens(model, text, temperature=1e6, generator=gens)
    assert all(len(set(row.tolist())) > 8 for row in codes), codes


def test_cached_logits_match_teacher_forcing(model):
    text = torch.randint(3, 40, (2, 8))
    codes = torch.randint(0, 64, (2, 16))
    full = model(text, codes).image_logits  # (B, N, K)
    cache = model.new_cache()
    steps = [model.prefill(text, cache)] + [model.step(codes[:, i:i + 1], cache) for i in range(15)]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-10)
    with pytest.raises(ValueError, match="null_text"):
        sample_image_tokens(model, text, cfg_scale=2.0)


def test_inverse_cdf_never_draws_a_zero_probability_token():
    logits = torch.tensor([[3.0, 0.0, 2.0, 1.0]]).expand(5, 4)
    u = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0 - 1e-7])  # the ends of [0, 1) included
    assert sample_next(logits, top_k=1, uniform=u).tolist() == [0] * 5
    two = sample_next(logits, top_k=2, uniform=u).tolist()  # tokens 0 and 2 kept, p = 0.73 / 0.27
    assert set(two) == {0, 2} and two[0] == 0 and two[-1] == 2
    assert sample_next(logits[:1], top_k=2, uniform=torch.tensor([1.0])).item() == 2  # u * total rounded up
    # u = 0 lies on the cdf's first plateau when the first token has no probability
    assert sample_next(torch.tensor([[float("-inf"), 0.0, 1.0], [0.0, 2.0, 1.0]]), top_k=2,
                       uniform=torch.zeros(2)).tolist() == [1, 1]


def test_tiny_temperatures_are_greedy_and_non_finite_settings_are_refused():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 0.0, 4.0]])
    u = torch.tensor([0.999, 0.5])
    for t in (1e-3, 1e-20, 1e-40):  # logits / t overflowed to inf: a NaN softmax drew the last token
        assert sample_next(logits, t, uniform=u).tolist() == [1, 3]
        assert sample_next(logits, t, generator=torch.Generator().manual_seed(0)).tolist() == [1, 3]
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            sample_next(logits, bad)
    # a row of negative logits underflows to all -inf instead (NaN softmax: the last token, or an error)
    negative = torch.tensor([[-10.0, -30.0, -20.0, -50.0], [-40.0, -8.0, -90.0, -10.0]])
    for t in (1e-3, 2e-38):
        assert sample_next(negative, t, uniform=u).tolist() == [0, 1]
        assert sample_next(negative, t, generator=torch.Generator().manual_seed(0)).tolist() == [0, 1]
    # greedy (temperature 0) still refuses filters no sampler could use
    for bad in (dict(top_k=0), dict(top_p=5.0)):
        with pytest.raises(ValueError, match="top_k must be >= 1|top_p must be in"):
            sample_next(logits, 0.0, **bad)


def test_temperatures_below_the_float32_normal_range_are_greedy_where_denormals_are_flushed():
    """torch.compile on torch 2.5 leaves the process flushing denormals (as set_flush_denormal does):
    a 1e-40 temperature then divided as 0, and 0 / 0 gave a NaN row that drew the last token."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 0.0, 4.0], [2.0, 2.0, -1.0, 0.0]])
    u = torch.tensor([0.999, 0.5, 0.75])
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for t in (1e-38, 1e-40, 1e-45):
            assert sample_next(logits, t, uniform=u).tolist() == [1, 3, 1]  # a tie of maxima shares the mass
    finally:
        torch.set_flush_denormal(False)


def test_non_finite_guidance_is_refused(model):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
            sample_image_tokens(model, torch.ones(1, 8, dtype=torch.long), cfg_scale=bad,
                                null_text=torch.zeros(8, dtype=torch.long))


def test_rows_that_do_not_overflow_are_divided_as_before():
    """The overflow guard must not move a draw: at T != 1, (l - max) / T and l / T differ in the
    last bit, which flips a few inverse-CDF draws in 10^5 (and then every later token)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 512, generator=g) * 3
    u = torch.rand(20000, generator=g)
    for t in (0.7, 0.9, 1.3):
        probs = (logits / t).softmax(-1)
        cdf = probs.cumsum(-1)
        plain = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]), right=True).squeeze(-1).clamp(max=511)
        assert torch.equal(sample_next(logits, t, uniform=u), plain)


def test_top_p_stops_at_the_token_that_reaches_it():
    """Holtzman et al.'s nucleus is the smallest set whose mass reaches p: at probabilities
    0.5 / 0.25 / 0.25 and p = 0.5 the first token alone, at p = 0.75 the first two."""
    import math

    logits = torch.tensor([[math.log(2), 0.0, 0.0]])
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False]]
    assert filter_logits(logits, top_p=0.75).isfinite().tolist() == [[True, True, False]]
    assert filter_logits(logits, top_p=0.76).isfinite().tolist() == [[True, True, True]]


@pytest.mark.parametrize("use_cache", [True, False])
def test_guidance_contrasts_the_caption_with_the_null_caption(model, use_cache):
    """Greedy guided decoding equals a hand-written loop over uncond + s * (cond - uncond), where
    uncond reads the null caption: a sampler that fed the caption twice passed the other tests."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 40, (3, 8), generator=g)
    null = torch.zeros(8, dtype=torch.long)
    codes = text.new_zeros(3, 0)
    for _ in range(model.num_image_tokens):
        cond = model.next_image_logits(text, codes)
        uncond = model.next_image_logits(null.expand_as(text), codes)
        codes = torch.cat([codes, guided_logits(cond, uncond, 3.0).argmax(-1, keepdim=True)], dim=1)
    got = sample_image_tokens(model, text, temperature=0.0, cfg_scale=3.0, null_text=null, use_cache=use_cache)
    assert torch.equal(got, codes)
    assert not torch.equal(got, sample_image_tokens(model, text, temperature=0.0, use_cache=use_cache))


def test_step_before_prefill_is_an_error(model):
    """The codes were embedded at raster position -(prefix + 1), wrapped to the grid's end, and
    logits came back as if nothing were wrong."""
    with pytest.raises(ValueError, match=r"step\(\) before prefill\(\)"):
        model.step(torch.zeros(2, 1, dtype=torch.long), model.new_cache())
