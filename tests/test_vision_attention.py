"""Attention maps of our ViT and timm's, attention rollout, and the vision report callbacks."""

import json

import pytest
import pytorch_lightning as pl
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from test_vision_helpers import TINY, mnist, tiny_task, trainer
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


def test_two_validations_an_epoch_keep_both_reports(tmp_path):
    # val_check_interval 0.5: validations after steps 2 and 4 of epoch 0; named by epoch alone the
    # second overwrote the first
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", patch_size=7)
    tr = trainer(tmp_path, steps=-1, max_epochs=1, limit_train_batches=4, val_check_interval=0.5,
                 callbacks=[AttentionMaps(num_images=2), ClassificationReport(max_images=4)])
    tr.fit(task, mnist(limit_train=256))
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    for step in ("000002", "000004"):
        assert {f"attention_val_e000_step{step}.png", f"confusion_val_e000_step{step}.png",
                f"per_class_val_e000_step{step}.json"} <= names, names


def test_every_n_epochs_thins_out_fit_but_a_validate_run_always_reports(tmp_path):
    """every_n_epochs 5 over a 3-epoch fit: only the last epoch reports; `validate` afterwards was
    thinned out by the same rule (epoch 3 of 5: no figures at all) and must report."""
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", patch_size=4)
    callbacks = [AttentionMaps(num_images=2, every_n_epochs=5), ClassificationReport(max_images=4, every_n_epochs=5)]
    tr = trainer(tmp_path, steps=-1, max_epochs=3, limit_train_batches=1, callbacks=callbacks)
    tr.fit(task, mnist(limit_train=128))
    drawn = {"attention_val_e002.png", "confusion_val_e002.png", "per_class_val_e002.json",
             "misclassified_val_e002.png"}
    assert {p.name for p in (tmp_path / "figures").iterdir()} == drawn
    for p in (tmp_path / "figures").iterdir():
        p.unlink()
    tr.validate(task, mnist(), verbose=False)  # tagged with the trainer's epoch count after the fit
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {n.replace("e002", "e003") for n in drawn}


def test_validation_due_in_fit_validate_and_the_last_epoch():
    from types import SimpleNamespace

    from tx_suite.tasks.callbacks.due import validation_due

    def due(fn="fit", epoch=0, max_epochs=10, max_steps=-1, step=0, sanity=False, every=3, stop=False, can_stop=True):
        t = SimpleNamespace(state=SimpleNamespace(fn=fn), current_epoch=epoch, max_epochs=max_epochs,
                            max_steps=max_steps, global_step=step, sanity_checking=sanity, should_stop=stop,
                            fit_loop=SimpleNamespace(_can_stop_early=can_stop))
        return validation_due(t, every)

    assert [e for e in range(10) if due(epoch=e)] == [2, 5, 8, 9]  # every 3rd and the last
    assert not due(epoch=2, sanity=True) and due(fn="validate", epoch=0)
    # max_steps alone (Lightning sets max_epochs -1): the last epoch is the one that reaches it
    assert not due(epoch=0, max_epochs=-1, max_steps=40, step=20) and due(epoch=1, max_epochs=-1, max_steps=40, step=40)
    # max_time (or early stopping) ends the fit: Lightning's last validation reports, unless
    # min_epochs keeps the fit going
    assert due(epoch=0, stop=True) and not due(epoch=0, stop=True, can_stop=False)


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
    dm = mnist(limit_train=128)
    tr.fit(task, dm)
    rows = tables["val/misclassified"]
    assert rows
    for image, *_ in rows:
        pixels = np.asarray(image.image)
        assert pixels.shape == (28, 28) and pixels.max() > 200, (pixels.dtype, pixels.max())
    # The rows are the first misclassified images of the (one) validation batch, by hand: the
    # true label, the prediction, its probability, and the raw MNIST pixels back.
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        probs = task(x).float().softmax(-1)
    conf, pred = probs.max(-1)
    wrong = torch.nonzero(pred != y).flatten()[:4].tolist()
    assert len(rows) == len(wrong) == 4
    for (image, label, prediction, probability), i in zip(rows, wrong):
        assert (label, prediction) == (str(int(y[i])), str(int(pred[i]))) and label != prediction
        assert probability == pytest.approx(float(conf[i]), abs=1e-5)
        raw = dm.val_set.dataset.data[dm.val_set.indices[i]].numpy().astype(int)
        assert np.abs(np.asarray(image.image).astype(int) - raw).max() <= 1


def test_cls_maps_read_the_cls_row_over_the_patches():
    """The CLS token (row 0) looks only at the bottom-right patch, every patch only at the CLS
    token (column 0): the maps must show the bottom-right patch, per head and in the rollout."""
    attn = torch.zeros(1, 2, 5, 5)  # 2 x 2 patches + CLS
    attn[..., 0, 4] = 1.0
    attn[..., 1:, 0] = 1.0
    heads, roll = cls_maps([attn, attn], (2, 2))
    bottom_right = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert torch.equal(heads, bottom_right.expand(1, 2, 2, 2))
    # by hand: A' = 0.5 A + 0.5 I, and row 0 of A' A' is 0.5 e_0 + 0.5 e_4
    assert torch.allclose(attention_rollout([attn, attn])[0, 0], torch.tensor([0.5, 0, 0, 0, 0.5]))
    assert torch.equal(roll, bottom_right.expand(1, 2, 2))


@pytest.mark.parametrize("backbone", ["timm", "tx"])
def test_attention_maps_come_in_depth_order_past_ten_layers(backbone):
    """Layer i of the list is block i's softmax(q k^T / sqrt(d)), recomputed from the block's input
    (ViT-B has 12 layers: "blocks.10" sorts before "blocks.2" as a string)."""
    torch.manual_seed(0)
    ref = TimmViT(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=12, num_heads=2,
                  mlp_ratio=1.0).eval()
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in ref.blocks]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref.forward_features(x)
    for h in hooks:
        h.remove()
    model = ref
    if backbone == "tx":
        model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, d_model=8, n_layers=12,
                                  n_heads=2, mlp_ratio=1.0).eval()
        load_timm_state_dict(model, ref.state_dict())
    _, maps = vit_attention(model, x)
    assert len(maps) == 12
    for i, (block, h, got) in enumerate(zip(ref.blocks, inputs, maps)):
        attn = block.attn
        b, t, c = h.shape
        with torch.no_grad():
            q, k, _ = attn.qkv(block.norm1(h)).reshape(b, t, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        want = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=f"layer {i}")


def test_attention_figures_show_the_raw_images_of_their_stage(tmp_path, monkeypatch):
    """The figure's inputs are the first images of the stage's own set, un-normalised back to the
    [0, 1] MNIST pixels, titled with their true labels."""
    import tx_suite.tasks.callbacks.vision_attention as va

    drawn = []
    figure = va.attention_figure
    monkeypatch.setattr(va, "attention_figure", lambda images, heads, roll, titles:
                        drawn.append((images, titles)) or figure(images, heads, roll, titles))
    task = tiny_task("tx")
    dm = mnist(eval_batch_size=8)
    tr = trainer(tmp_path, steps=1, callbacks=[AttentionMaps(num_images=2)])
    tr.validate(task, datamodule=dm, verbose=False)
    tr.test(task, datamodule=dm, verbose=False)
    assert len(drawn) == 2
    for (images, titles), dataset in zip(drawn, (dm.val_set, dm.test_set)):
        source = dataset.dataset if hasattr(dataset, "indices") else dataset
        index = dataset.indices[:2] if hasattr(dataset, "indices") else [0, 1]
        raw = source.data[index].float()[:, None] / 255
        torch.testing.assert_close(images, raw, atol=1e-5, rtol=0)
        assert [t.split(" -> ")[0] for t in titles] == [str(int(source.targets[i])) for i in index]


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_a_layer_the_model_lacks_fails_before_training(tmp_path, backbone):
    """AttentionMaps(layer=6) on a shallower model trained until its first due drawing (every 5
    epochs in the vision base config) and then died with an IndexError; num_images=0 likewise."""
    task = tiny_task(backbone, patch_size=4)
    n = TINY["n_layers"]
    tr = trainer(tmp_path, steps=1, callbacks=[AttentionMaps(num_images=2, layer=n)])
    with pytest.raises(ValueError, match=f"layer {n} does not exist in the {n}-layer model"):
        tr.fit(task, mnist(limit_train=64))
    assert tr.global_step == 0
    trainer(tmp_path, steps=1, callbacks=[AttentionMaps(num_images=2, layer=-n)])  # the first layer: fine
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        AttentionMaps(num_images=0)


def test_rollout_of_no_layers_is_an_error():
    with pytest.raises(ValueError, match="at least one layer"):
        attention_rollout([])  # returned None, not the (B, T, T) its docstring promised


def test_step_based_validation_names_its_files_by_step():
    """check_val_every_n_epoch null with val_check_interval >= the epoch: a max_time or early stop
    mid-epoch adds a validation to the epoch's scheduled one, and both wrote e.g.
    attention_val_e001.png (the first set lost)."""
    from types import SimpleNamespace

    from tx_suite.tasks.callbacks.due import step_suffix

    def trainer(**kw):
        base = dict(state=SimpleNamespace(fn="fit"), val_check_batch=5, num_training_batches=4,
                    check_val_every_n_epoch=1, global_step=7, _val_check_time_interval=None)
        return SimpleNamespace(**{**base, **kw})

    assert step_suffix(trainer()) == ""  # one validation per epoch: short names kept
    assert step_suffix(trainer(check_val_every_n_epoch=None)) == "_step000007"
    assert step_suffix(trainer(val_check_batch=2)) == "_step000007"
