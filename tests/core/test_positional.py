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
