"""Computing only the first rows in the last encoder layer (``Encoder(n_outputs=...)``, used by
the ViT's CLS-pooled forward) gives the same outputs and gradients as the full pass."""

import pytest
import torch

from tx_suite.core import Encoder, MultiHeadAttention, TransformerConfig
from tx_suite.models import VisionTransformer


@pytest.mark.parametrize("norm_first", [False, True])
def test_n_outputs_equals_first_rows_of_the_full_pass_with_masks(norm_first):
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, dropout=0.0, norm_first=norm_first)
    enc = Encoder(cfg, 3).eval()
    with torch.no_grad():  # distinct norms (at init all are the same): the short path must use the right ones
        for norm in (m for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 10, 32)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[1, 6:] = True
    attn_mask = torch.rand(10, 10) > 0.3
    attn_mask.fill_diagonal_(True)
    full = enc(x, key_padding_mask=pad, attn_mask=attn_mask)
    for n in (1, 4, 10):
        part = enc(x, key_padding_mask=pad, attn_mask=attn_mask, n_outputs=n)
        assert part.shape == (3, n, 32)
        real = ~pad[:, :n]  # padded rows hold whatever skip_padding left there; nothing reads them
        torch.testing.assert_close(part[real], full[:, :n][real], atol=1e-5, rtol=0)
    # the last layer must not be the only one run: a changed later row changes the first output
    y = x.clone()
    y[:, 5] += torch.randn(32)  # (not a constant: LayerNorm would remove it)
    assert (enc(y, n_outputs=1) - enc(x, n_outputs=1)).abs().max() > 1e-3


def test_vit_cls_forward_has_the_gradients_of_the_full_pass():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, d_model=32,
                            n_layers=2, n_heads=4).train()  # no dropout / drop path: deterministic
    images, labels = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))

    def grads(logits):
        vit.zero_grad()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return {k: p.grad.clone() for k, p in vit.named_parameters()}

    fast, full = grads(vit(images)), grads(vit.forward_head(vit.forward_features(images)))
    for name in full:
        torch.testing.assert_close(fast[name], full[name], atol=1e-6, rtol=1e-4, msg=name)
    assert fast["encoder.layers.1.self_attn.qkv_proj.weight"].abs().sum() > 0
    # and forward really takes the short path: the last MLP sees the CLS row only
    seen = []
    hook = vit.encoder.layers[-1].ffn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    vit(images)
    vit.forward_features(images)
    hook.remove()
    assert seen == [torch.Size([4, 1, 32]), torch.Size([4, 17, 32])]


@pytest.mark.parametrize("with_padding", [False, True])
def test_causal_n_outputs_are_the_first_rows_of_the_causal_pass(with_padding):
    """With is_causal the kept queries are the first positions: they see only keys up to their
    own (was: a ValueError without a mask, the right rows with one)."""
    torch.manual_seed(0)
    enc = Encoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32, dropout=0.0), 2).eval()
    mha = enc.layers[0].self_attn
    x = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    if with_padding:
        pad[1, 5:] = True
    kw = dict(key_padding_mask=pad) if with_padding else {}
    full = enc(x, is_causal=True, **kw)
    for n in (1, 3, 7):
        real = ~pad[:, :n]  # padded rows hold whatever skip_padding left there; nothing reads them
        part = enc(x, is_causal=True, n_outputs=n, **kw)
        torch.testing.assert_close(part[real], full[:, :n][real], atol=1e-5, rtol=0)
        attn = mha(x, is_causal=True, n_queries=n, **kw)[0]
        torch.testing.assert_close(attn, mha(x, is_causal=True, **kw)[0][:, :n], atol=1e-6, rtol=0)


def test_n_outputs_rejects_what_it_cannot_do():
    enc = Encoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32), 1)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="n_outputs"):
        enc(x, n_outputs=0)
    mha = MultiHeadAttention(16, 2)
    for n in (0, 6):  # failed in a view() with "shape '[2, 6, 16]' is invalid"
        with pytest.raises(ValueError, match=r"n_queries must be in 1\.\.5"):
            mha(x, n_queries=n)
    rope_enc = Encoder(TransformerConfig(d_model=16, n_heads=2, d_ff=32, rope=True), 1)
    with pytest.raises(ValueError, match="rotary"):
        rope_enc(x, n_outputs=1)
    cross = MultiHeadAttention(16, 2, cross_attention=True)
    with pytest.raises(ValueError, match="self-attention"):
        cross(x, x, n_queries=1)
