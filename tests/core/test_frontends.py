"""Front-ends: token scaling/tying, patchify vs convolution, image-token grids, joint sequences."""

import math

import pytest
import torch
import torch.nn.functional as F

from tx_suite.core import DecoderOnly, TransformerConfig, sinusoidal_table
from tx_suite.frontends import ImageTokenGrid, PatchEmbedding, TextImageSequence, TokenEmbedding


def test_token_embedding_scales_adds_positions_and_ties():
    emb = TokenEmbedding(20, 16, pad_id=0, pos_encoding="none")
    tokens = torch.tensor([[3, 0, 5]])
    out = emb(tokens)
    torch.testing.assert_close(out[0, 0], emb.weight[3] * math.sqrt(16))
    assert out[0, 1].abs().max() == 0  # pad row is zero
    head = torch.nn.Linear(16, 20, bias=False)
    head.weight = emb.weight
    assert head.weight.data_ptr() == emb.embedding.weight.data_ptr()
    with pytest.raises(ValueError, match="pos_encoding"):
        TokenEmbedding(20, 16, pos_encoding="alibi")


def test_token_embedding_init_scale_and_position_kinds():
    # N(0, D^-1/2) weights, so that the sqrt(D)-scaled embeddings have unit variance (§3.4)
    torch.manual_seed(0)
    emb = TokenEmbedding(1000, 64, pos_encoding="none")
    assert emb.weight.std().item() == pytest.approx(64**-0.5, rel=0.05)
    assert emb(torch.arange(1000)[None]).std().item() == pytest.approx(1.0, rel=0.05)
    tokens = torch.randint(0, 50, (2, 7))
    unscaled = TokenEmbedding(50, 16, pos_encoding="none", scale=False)
    torch.testing.assert_close(unscaled(tokens), unscaled.weight[tokens])
    sinusoidal = TokenEmbedding(50, 16, pos_encoding="sinusoidal", max_len=12)
    torch.testing.assert_close(sinusoidal(tokens), sinusoidal.weight[tokens] * 4 + sinusoidal_table(7, 16))
    learned = TokenEmbedding(50, 16, pos_encoding="learned", max_len=12)
    # a learned table is a trainable (max_len, D) parameter; sinusoidal positions have none
    assert sum(p.numel() for p in learned.parameters()) == 50 * 16 + 12 * 16
    assert sum(p.numel() for p in sinusoidal.parameters()) == 50 * 16


@pytest.mark.parametrize("front_end", ["text", "image_grid", "patches"])
def test_front_end_dropout_is_on_the_sum_and_in_training_only(front_end):
    torch.manual_seed(0)
    if front_end == "text":
        module, inputs = TokenEmbedding(50, 16, dropout=0.5), torch.randint(1, 50, (4, 32))
    elif front_end == "image_grid":
        module, inputs = ImageTokenGrid(16, 16, height=4, width=4, dropout=0.5), torch.randint(0, 16, (4, 4, 4))
    else:
        module = PatchEmbedding(img_size=8, patch_size=4, in_chans=1, d_model=16, pos_dropout=0.5)
        inputs = torch.randn(8, 1, 8, 8)
    clean = module.eval()(inputs)
    assert torch.equal(module(inputs), clean) and (clean != 0).all()
    noisy = module.train()(inputs)
    dropped = noisy == 0
    assert abs(dropped.float().mean().item() - 0.5) < 0.1
    # the kept entries are the whole sum (embedding + position) scaled by 1 / (1 - p)
    torch.testing.assert_close(noisy[~dropped], 2 * clean[~dropped])


def test_patchify_equals_strided_convolution():
    torch.manual_seed(0)
    pe = PatchEmbedding(img_size=(12, 8), patch_size=4, in_chans=3, d_model=10, class_token=False)
    x = torch.randn(2, 3, 12, 8)
    conv = F.conv2d(x, pe.proj.weight.view(10, 3, 4, 4), pe.proj.bias, stride=4)  # (B, D, 3, 2)
    expected = conv.flatten(2).transpose(1, 2) + pe.pos_embed
    torch.testing.assert_close(pe(x), expected, atol=1e-5, rtol=0)
    assert pe.num_prefix_tokens == 0 and pe.grid_size == (3, 2)


def test_patch_embedding_starts_with_vit_init():
    # timm's ViT init: positions and projection N(0, 0.02) (truncated), CLS N(0, 1e-6), zero bias
    torch.manual_seed(0)
    pe = PatchEmbedding(img_size=64, patch_size=4, in_chans=3, d_model=64)
    assert pe.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert pe.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < pe.cls_token.abs().max() < 1e-5 and not pe.proj.bias.any()


def test_patch_embedding_cls_and_errors():
    pe = PatchEmbedding(img_size=8, patch_size=4, in_chans=1, d_model=6)
    out = pe(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 5, 6)
    torch.testing.assert_close(out[:, 0], (pe.cls_token + pe.pos_embed[:, :1]).squeeze(1).expand(2, -1))
    with pytest.raises(ValueError, match="divisible"):
        pe(torch.zeros(1, 1, 9, 8))
    with pytest.raises(ValueError, match="channel"):
        pe(torch.zeros(1, 3, 8, 8))


def test_text_image_sequence_layout_and_incremental_equivalence():
    torch.manual_seed(0)
    text = TokenEmbedding(30, 32, pad_id=0, pos_encoding="learned", max_len=6)
    image = ImageTokenGrid(16, 32, height=3, width=3)
    seq = TextImageSequence(text, image, text_len=6, pad_id=0).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
    codes = torch.randint(0, 16, (2, 3, 3))
    x, pad = seq(tokens, codes)
    assert x.shape == (2, 6 + 1 + 9, 32) and pad.shape == (2, 16)
    assert pad[0].tolist() == [False] * 3 + [True] * 3 + [False] * 10
    torch.testing.assert_close(x[:, 7 + 4], image.embedding(codes.flatten(1)[:, 4]) + image.pos(1, 4)[0])

    gpt = DecoderOnly(TransformerConfig(d_model=32, n_heads=4, d_ff=64, dropout=0.0), 2).eval()
    full = gpt(x, key_padding_mask=pad)
    cache = gpt.new_cache()
    prefix, prefix_pad = seq.embed_prefix(tokens)
    outs = [gpt(prefix, key_padding_mask=prefix_pad, cache=cache)]
    flat = codes.flatten(1)
    for j in range(9):
        outs.append(gpt(seq.embed_image(flat[:, j:j + 1], offset=j), cache=cache))
    got = torch.cat(outs, 1)
    assert (got[~pad] - full[~pad]).abs().max() <= 1e-5


def test_text_image_sequence_puts_boi_after_the_text():
    torch.manual_seed(0)
    text = TokenEmbedding(30, 32, pad_id=0, pos_encoding="learned", max_len=6)
    seq = TextImageSequence(text, ImageTokenGrid(16, 32, height=3, width=3), text_len=6, pad_id=0).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0]])
    x, _ = seq(tokens, torch.randint(0, 16, (1, 3, 3)))
    torch.testing.assert_close(x[:, :6], text(tokens))
    torch.testing.assert_close(x[0, 6], seq.boi[0, 0])
    # prefix_len - 1 is where <boi> sits, whose output predicts the first image token
    assert seq.prefix_len == 7
    torch.testing.assert_close(x[0, seq.prefix_len - 1], seq.boi[0, 0])


def test_image_codes_in_the_wrong_grid_shape_are_refused():
    # (B, W, H) or (B, 1, H*W) flatten to the right length with codes at the wrong 2-D positions.
    image = ImageTokenGrid(16, 8, height=2, width=3)
    seq = TextImageSequence(TokenEmbedding(30, 8, pad_id=0, max_len=4), image, text_len=4, pad_id=0)
    assert image(torch.zeros(1, 2, 3, dtype=torch.long)).shape == (1, 6, 8)
    for bad in (torch.zeros(1, 3, 2), torch.zeros(1, 1, 6), torch.zeros(1, 6, 1, 1)):
        with pytest.raises(ValueError, match="image codes"):
            image(bad.long())
        with pytest.raises(ValueError, match="image codes"):
            seq(torch.ones(1, 4, dtype=torch.long), bad.long())
