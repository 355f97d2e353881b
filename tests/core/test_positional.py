"""Positional encodings: the paper's formula, RoPE's relative property, grids, equivariance."""

import math

import pytest
import torch

from tx_suite.core import (Encoder, Grid2DPositionalEmbedding, LearnedPositionalEmbedding, RotaryEmbedding,
                           SinusoidalPositionalEncoding, TransformerConfig, sinusoidal_table)
from tx_suite.frontends import TokenEmbedding


def test_sinusoidal_matches_the_paper_formula():
    d = 16
    table = sinusoidal_table(50, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_fairseq_sinusoid_layout_matches_fairseqs_formula():
    """fairseq's ``get_embedding``: ``[sin | cos]`` halves, exponent ``i / (h - 1)``, an odd width
    padded with a zero column; tokens numbered from ``padding_idx + 1`` = 2."""
    for d in (16, 9):
        h = d // 2
        table = sinusoidal_table(50, d, layout="fairseq")
        for pos in (0, 1, 7, 49):
            for i in range(h):
                angle = pos * math.exp(-i * math.log(10000) / (h - 1))
                assert table[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
                assert table[pos, h + i].item() == pytest.approx(math.cos(angle), abs=1e-6)
        assert table.shape == (50, d) and (d % 2 == 0 or table[:, -1].abs().max() == 0)
    # the lowest frequency is exactly 1/10000 (the paper's stops at 10000^(-7/8) for d = 16)
    assert sinusoidal_table(2, 16, layout="fairseq")[1, 7].item() == pytest.approx(math.sin(1e-4), rel=1e-5)
    pe = SinusoidalPositionalEncoding(16, max_len=4, layout="fairseq", start=2)
    assert torch.equal(pe(3), sinusoidal_table(5, 16, layout="fairseq")[2:])
    assert torch.equal(pe(3, offset=10), sinusoidal_table(15, 16, layout="fairseq")[12:])  # grows past max_len
    emb = TokenEmbedding(50, 16, pos_encoding="sinusoidal_fairseq")
    tokens = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(emb(tokens), emb.weight[tokens] * 4 + sinusoidal_table(5, 16, layout="fairseq")[2:])
    with pytest.raises(ValueError, match="layout"):
        sinusoidal_table(4, 16, layout="interleaved")
    with pytest.raises(ValueError, match="d_model >= 4"):
        sinusoidal_table(4, 2, layout="fairseq")


def test_sinusoidal_module_offsets_and_grows():
    pe = SinusoidalPositionalEncoding(8, max_len=4)
    assert torch.equal(pe(3, offset=10), sinusoidal_table(13, 8)[10:])
    # growing keeps the module's dtype: a bf16 model decoding past max_len must stay bf16
    pe = SinusoidalPositionalEncoding(8, max_len=4).to(torch.bfloat16)
    assert pe(3, offset=10).dtype == torch.bfloat16


def test_learned_and_grid_positions():
    learned = LearnedPositionalEmbedding(5, 4)
    assert torch.equal(learned(2, offset=3), learned.weight[3:5])
    with pytest.raises(IndexError, match="max_len=5"):
        learned(3, offset=3)
    grid = Grid2DPositionalEmbedding(3, 4, 8)
    out = grid(12)
    assert torch.equal(out[6], grid.row[1] + grid.col[2])  # raster index 6 = (row 1, col 2)
    assert torch.equal(grid(2, offset=6), out[6:8])
    with pytest.raises(IndexError):
        grid(1, offset=12)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)  # the inequality below has a margin a rare draw could miss
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):  # the queries from the first output, the keys from the second: both must rotate
        qm, _ = rope(q, k, offset=m)
        _, kn = rope(q, k, offset=n)
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_encoder_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    enc = Encoder(TransformerConfig(d_model=32, n_heads=4, d_ff=64, dropout=0.0), 2).eval()
    x = torch.randn(2, 7, 32)
    perm = torch.randperm(7)
    assert (enc(x)[:, perm] - enc(x[:, perm])).abs().max() <= 1e-5
    # with sinusoidal positions added by the token front-end, equivariance breaks
    emb = TokenEmbedding(50, 32, pos_encoding="sinusoidal").eval()
    tokens = torch.randint(0, 50, (2, 7))
    assert (enc(emb(tokens))[:, perm] - enc(emb(tokens[:, perm]))).abs().max() > 1e-3


def test_a_negative_offset_is_refused_not_wrapped_around():
    """Python's negative indexing made offset -2 the last rows of the table (or an empty result)."""
    for pe in (Grid2DPositionalEmbedding(2, 3, 4), LearnedPositionalEmbedding(5, 4), SinusoidalPositionalEncoding(4, 16)):
        with pytest.raises(IndexError, match="offset must be >= 0, got -2"):
            pe(1, -2)
    rope = RotaryEmbedding(8)
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(IndexError, match="offset must be >= 0"):
        rope(q, q, offset=-1)


def test_rotary_refuses_queries_and_keys_of_different_lengths():
    """cos/sin were built from q's length: one query row broadcast a single angle over every key."""
    rope = RotaryEmbedding(8)
    with pytest.raises(ValueError, match="must hold the same new positions"):
        rope(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="head dim 8"):
        rope(torch.randn(1, 2, 3, 6), torch.randn(1, 2, 3, 6))
