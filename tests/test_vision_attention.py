"""Attention maps of our ViT and timm's, attention rollout, and the vision report callbacks."""

import json

import pytest
import pytorch_lightning as pl
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from test_vision_helpers import mnist, tiny_task, trainer
from tx_suite.models import VisionTransformer, load_timm_state_dict
from tx_suite.tasks.callbacks.vision_attention import AttentionMaps, attention_rollout, cls_maps, vit_attention
from tx_suite.tasks.callbacks.vision_report import ClassificationReport


def _random_attention(b, h, t, generator):
    return torch.rand(b, h, t, t, generator=generator).softmax(-1)


def test_rollout_rows_sum_to_one_and_match_the_definition():
    g = torch.Generator().manual_seed(0)
    layers = [_random_attention(2, 3, 5, g) for _ in range(3)]
    roll = attention_rollout(layers)
    assert torch.allclose(roll.sum(-1), torch.ones(2, 5), atol=1e-6)
    eye = torch.eye(5)
    a = [0.5 * x.mean(1) + 0.5 * eye for x in layers]  # Abnar & Zuidema: add I, rows already sum to 1
    assert torch.allclose(roll, a[2] @ a[1] @ a[0], atol=1e-6)
    # tokens that only attend to themselves pass nothing on: the rollout is the identity
    assert torch.allclose(attention_rollout([eye.expand(1, 2, 5, 5)] * 4), eye.expand(1, 5, 5))


def test_our_maps_equal_timm_maps_for_the_same_weights():
    torch.manual_seed(0)
    ref = TimmViT(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4,
                  mlp_ratio=2.0).eval()
    ours = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, d_model=32, n_layers=2,
                             n_heads=4, mlp_ratio=2.0).eval()
    load_timm_state_dict(ours, ref.state_dict())
    x = torch.randn(3, 1, 28, 28)
    logits_ours, maps_ours = vit_attention(ours, x)
    logits_timm, maps_timm = vit_attention(ref, x)
    assert len(maps_ours) == len(maps_timm) == 2
    assert maps_ours[0].shape == (3, 4, 50, 50)
    for a, b in zip(maps_ours, maps_timm):
        assert (a - b).abs().max() < 1e-5
    assert (logits_ours - logits_timm).abs().max() < 1e-5
    assert ref.blocks[0].attn.fused_attn == TimmViT(embed_dim=32, depth=1, num_heads=4).blocks[0].attn.fused_attn
    heads, roll = cls_maps(maps_ours, (7, 7))
    assert heads.shape == (3, 4, 7, 7) and roll.shape == (3, 7, 7)
    assert heads.amax((-2, -1)).allclose(torch.ones(3, 4)) and roll.amin((-2, -1)).allclose(torch.zeros(3))


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_callbacks_write_figures_without_wandb(tmp_path, backbone):
    pl.seed_everything(0, verbose=False)
    task = tiny_task(backbone, patch_size=4)
    tr = trainer(tmp_path, steps=2, callbacks=[AttentionMaps(num_images=3), ClassificationReport(max_images=8)])
    tr.fit(task, mnist(limit_train=128))
    tr.test(task, mnist(), verbose=False)
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    for tag in ("val_e000", "test"):
        assert {f"attention_{tag}.png", f"confusion_{tag}.png", f"per_class_{tag}.json",
                f"misclassified_{tag}.png"} <= set(figures), figures
    per_class = json.loads((tmp_path / "figures" / "per_class_val_e000.json").read_text())
    assert sorted(per_class) == [str(d) for d in range(10)]
    assert sum(v["count"] for v in per_class.values()) == 128  # one validation batch (limit_val_batches=1)


def test_callbacks_log_to_wandb_when_attached(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged = []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, step=None, **kw: logged.append(key))
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns=None, data=None, step=None, **kw:
                        logged.append((key, len(data))))
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", patch_size=4)
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    tr = trainer(tmp_path, steps=2, logger=logger, callbacks=[AttentionMaps(num_images=2), ClassificationReport(max_images=4)])
    tr.fit(task, mnist(limit_train=128))
    assert "val/attention" in logged and "val/confusion_matrix" in logged
    assert ("val/per_class_accuracy", 10) in logged and ("val/misclassified", 4) in logged
    assert not (tmp_path / "figures").exists()


def test_misclassified_table_images_keep_their_pixels(tmp_path, monkeypatch):
    """The W&B table of misclassified images holds the digits, not all-black images: wandb.Image
    casts a float [0, 1] array straight to uint8 (0 or 1)."""
    import numpy as np
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    tables = {}
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, step=None, **kw: None)
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns=None, data=None, step=None, **kw:
                        tables.__setitem__(key, data))
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", patch_size=4)
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    tr = trainer(tmp_path, steps=2, logger=logger, callbacks=[ClassificationReport(max_images=4)])
    tr.fit(task, mnist(limit_train=128))
    rows = tables["val/misclassified"]
    assert rows
    for image, *_ in rows:
        pixels = np.asarray(image.image)
        assert pixels.shape == (28, 28) and pixels.max() > 200, (pixels.dtype, pixels.max())
