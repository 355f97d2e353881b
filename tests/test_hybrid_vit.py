"""Hybrid ViT (Dosovitskiy et al. 2020 §3.1): a conv stem's feature map cut into patches."""

import pytest
import pytorch_lightning as pl
import torch
from einops import rearrange
from torch import nn

from test_vision_helpers import mnist, tiny_task, trainer
from tx_suite.frontends import ConvStem, PatchEmbedding
from tx_suite.models.vit import VisionTransformer, checkpoint_filter_fn, load_timm_checkpoint, timm_twin
from tx_suite.tasks.callbacks.vision_attention import AttentionMaps
from tx_suite.tasks.classification import build_backbone, load_classifier

HYBRID = dict(stem_channels=[8, 16], patch_size=1)  # 28 -> 14 -> 7: 49 tokens + CLS


class _IdentityStem(nn.Identity):
    out_chans, stride = 1, 1


def test_an_identity_stem_gives_the_plain_patch_embedding():
    torch.manual_seed(0)
    plain = PatchEmbedding(28, 4, 1, 32)
    hybrid = PatchEmbedding(28, 4, 1, 32, stem=_IdentityStem())
    hybrid.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(hybrid(x), plain(x))


@pytest.mark.parametrize("patch_size", [1, 7])
def test_tokens_are_patches_of_the_stem_feature_map(patch_size):
    torch.manual_seed(0)
    stem = ConvStem(3, [8, 16])
    emb = PatchEmbedding(56, patch_size, 3, 32, stem=stem).eval()
    assert emb.stride == 4 * patch_size and emb.grid_size == (14 // patch_size,) * 2
    x = torch.randn(2, 3, 56, 56)
    feat = stem(x)
    assert feat.shape == (2, 16, 14, 14)
    patches = rearrange(feat, "b c (h p) (w q) -> b (h w) (c p q)", p=patch_size, q=patch_size)
    want = torch.cat([emb.cls_token.expand(2, -1, -1), emb.proj(patches)], 1) + emb.pos_embed
    torch.testing.assert_close(emb(x), want)


def test_conv_stem_layers_strides_and_errors():
    stem = ConvStem(1, [32, 64, 128], [1, 2, 2])
    convs = [m for m in stem.convs if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2)] and all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.convs) == 3
    assert (stem.out_chans, stem.stride) == (128, 4)
    assert stem(torch.randn(2, 1, 28, 28)).shape == (2, 128, 7, 7)
    with pytest.raises(ValueError, match="at least one"):
        ConvStem(1, [])
    with pytest.raises(ValueError, match="one per conv"):
        ConvStem(1, [8, 8], [2])
    with pytest.raises(ValueError, match=">= 1"):
        ConvStem(1, [8], [0])


def test_hybrid_vit_cls_shortcut_equals_the_full_forward_and_sizes_are_checked():
    torch.manual_seed(0)
    vit = VisionTransformer(28, in_chans=1, num_classes=10, d_model=32, n_layers=2, n_heads=4, **HYBRID).eval()
    x = torch.randn(3, 1, 28, 28)
    assert vit.forward_features(x).shape == (3, 50, 32)
    torch.testing.assert_close(vit(x), vit.forward_head(vit.forward_features(x)))
    with pytest.raises(ValueError, match="stem stride x patch_size = 8"):
        VisionTransformer(28, patch_size=2, in_chans=1, d_model=32, n_layers=1, n_heads=4, stem_channels=[8, 8])
    with pytest.raises(ValueError, match="not divisible"):
        vit(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="stem_channels"):
        VisionTransformer(28, patch_size=4, in_chans=1, d_model=32, n_layers=1, n_heads=4, stem_strides=[2])


def test_timm_weights_and_the_timm_backbone_refuse_a_stem():
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    vit = VisionTransformer(28, in_chans=1, num_classes=10, d_model=32, n_layers=1, n_heads=4, **HYBRID)
    sd = TimmViT(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=4).state_dict()
    for call in (lambda: load_timm_checkpoint(vit, sd), lambda: checkpoint_filter_fn(sd, vit), lambda: timm_twin(vit)):
        with pytest.raises(ValueError, match="conv stem"):
            call()
    with pytest.raises(ValueError, match="backbone: tx"):
        build_backbone("timm", num_classes=10, img_size=28, in_chans=1, patch_size=1, d_model=32, n_layers=1,
                       n_heads=4, d_ff=64, stem_channels=[8, 16])


def test_hybrid_task_learns_on_mnist_and_its_ema_tracks_the_batchnorm(tmp_path):
    """Gradients reach the stem, the loss falls, and the EMA copy (what is evaluated) carries
    BatchNorm statistics of the data rather than its initial (0, 1)."""
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", ema_decay=0.9, **HYBRID)
    stem0 = task.model.patch_embed.stem.convs[0].weight.detach().clone()
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    tr = trainer(tmp_path, steps=40, callbacks=[Record()])
    tr.fit(task, mnist(limit_train=64 * 40))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # 2.31 -> 2.00 here
    assert not torch.equal(task.model.patch_embed.stem.convs[0].weight, stem0)
    ema_bn = task.inference_model.patch_embed.stem.convs[1]
    assert ema_bn.running_mean.abs().max() > 1e-3 and not torch.allclose(ema_bn.running_var, torch.ones_like(ema_bn.running_var))
    ckpt = tmp_path / "hybrid.ckpt"
    tr.save_checkpoint(ckpt)
    loaded = load_classifier(ckpt).eval()
    task.eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), task(x))


def test_attention_maps_of_a_hybrid_cover_the_image(tmp_path, monkeypatch):
    """A token of a hybrid covers stem stride x patch pixels: the maps are drawn on the 7x7 grid."""
    import tx_suite.tasks.callbacks.vision_attention as va

    grids = []
    real = va.cls_maps
    monkeypatch.setattr(va, "cls_maps", lambda maps, grid, *a: grids.append(grid) or real(maps, grid, *a))
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", **HYBRID)
    tr = trainer(tmp_path, steps=1, callbacks=[AttentionMaps(num_images=2)])
    tr.fit(task, mnist(limit_train=64))
    assert grids == [(7, 7)] and (tmp_path / "figures" / "attention_val_e000.png").is_file()
