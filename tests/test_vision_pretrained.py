"""timm ViT weights loaded through the task from a file: equal outputs, resampled positions."""

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter

from tx_suite.tasks.classification import ImageClassification

SIZE = dict(patch_size=4, d_model=32, n_layers=2, n_heads=4, d_ff=64)


def timm_vit(distilled: bool = False, **kw):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    args.update(kw)
    return (VisionTransformerDistilled if distilled else TimmViT)(**args).eval()


def task(path, **kw):
    args = dict(SIZE, backbone="tx", img_size=28, in_chans=1, num_classes=10, drop_path=0.0, pretrained=str(path))
    args.update(kw)
    return ImageClassification(**args).eval()


@pytest.mark.parametrize("backbone", ["tx", "timm"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_loaded_weights_give_timm_outputs(tmp_path, backbone, fmt):
    ref = timm_vit()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(ref.state_dict(), path)
    else:
        sd = {f"module.{k}": v for k, v in ref.state_dict().items()} if fmt == "wrapped" else ref.state_dict()
        torch.save({"state_dict": sd, "epoch": 3} if fmt == "wrapped" else sd, path)
    ours = task(path, backbone=backbone)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-5


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_new_image_size_resamples_pos_embed_like_timm(tmp_path, backbone):
    ref = timm_vit()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = task(tmp_path / "w.pth", backbone=backbone, img_size=36)  # 9x9 patches instead of 7x7
    timm36 = timm_vit(img_size=36)
    timm36.load_state_dict(timm_filter(ref.state_dict(), timm36))  # timm's own resampling on load
    dynamic = timm_vit(dynamic_img_size=True)  # timm's resampling at run time
    dynamic.load_state_dict(ref.state_dict())
    x = torch.randn(3, 1, 36, 36)
    with torch.no_grad():
        out = ours(x)
        assert (out - timm36(x)).abs().max() < 1e-5
        assert (out - dynamic(x)).abs().max() < 1e-5
    pos = ours.model.pos_embed if backbone == "timm" else ours.model.patch_embed.pos_embed
    assert pos.shape == (1, 1 + 81, 32)


def test_weights_of_a_non_square_grid_with_a_square_patch_count_load_with_their_old_grid():
    """A state dict does not say its grid: 2 x 8 weights (16 = 4 x 4 rows) are read as a square
    grid by default, as pretrained timm ViTs are (tests/core/test_vit_timm.py), and then need
    old_grid_size to load unchanged, even into the same 2 x 8 model (docs/vision.md)."""
    from tx_suite.models.vit import VisionTransformer, load_timm_checkpoint

    wide = timm_vit(img_size=(8, 32))
    model = VisionTransformer(img_size=(8, 32), patch_size=4, in_chans=1, num_classes=10, d_model=32,
                              n_layers=2, n_heads=4, mlp_ratio=2.0).eval()
    load_timm_checkpoint(model, wide.state_dict(), old_grid_size=(2, 8))
    x = torch.randn(2, 1, 8, 32)
    with torch.no_grad():
        assert (model(x) - wide(x)).abs().max() < 1e-5
    torch.testing.assert_close(model.patch_embed.pos_embed, wide.pos_embed)


def assert_gray_matches_rgb(ours, ref):
    """RGB -> gray sums the kernels over channels: ``ours`` on a gray image gives the features of
    the RGB model ``ref`` on that image repeated over its channels."""
    gray = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        feats = ours.model.forward_head(ours.model.forward_features(gray), pre_logits=True)
        ref_feats = ref.forward_head(ref.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True)
    assert (feats - ref_feats).abs().max() < 1e-5


def test_rgb_weights_into_gray_model_and_new_head(tmp_path):
    ref = timm_vit(in_chans=3, num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = task(tmp_path / "w.pth", num_classes=10)
    assert_gray_matches_rgb(ours, ref)
    assert ours.model.head.weight.shape == (10, 32)


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_gray_weights_into_rgb_model(tmp_path, backbone):
    """timm's adapt_input_conv from the checkpoint's 1 channel: the kernel is repeated over 3
    channels and divided by 3, so a gray image given as RGB gives the gray model's features."""
    ref = timm_vit(in_chans=1)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = task(tmp_path / "w.pth", backbone=backbone, in_chans=3)
    gray = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (ours(gray.expand(-1, 3, -1, -1)) - ref(gray)).abs().max() < 1e-5


@pytest.mark.parametrize("old, new", [(3, 1), (1, 3), (3, 4), (4, 2), (2, 2)])
def test_channel_adaptation_equals_timms_with_base_chans(old, new):
    """Ours, because timm before base_chans (allowed by timm>=1.0) raised TypeError on the keyword
    (and NotImplementedError for gray -> RGB); where timm has it, the two must agree."""
    import inspect

    from timm.models import adapt_input_conv

    from tx_suite.models.vit import adapt_input_channels

    if "base_chans" not in inspect.signature(adapt_input_conv).parameters:
        pytest.skip("this timm has no base_chans")
    w = torch.randn(8, old, 4, 4)
    torch.testing.assert_close(adapt_input_channels(w, new), adapt_input_conv(new, w, base_chans=old))


def test_channel_adaptation_needs_no_recent_timm(tmp_path, monkeypatch):
    """timm 1.0's adapt_input_conv(in_chans, conv_weight) has no base_chans: loading RGB weights
    into the gray MNIST ViT raised TypeError with it."""
    import timm.models

    def old_timm(in_chans, conv_weight):
        raise AssertionError("timm's adapt_input_conv must not be needed")

    monkeypatch.setattr(timm.models, "adapt_input_conv", old_timm)
    ref = timm_vit(in_chans=3)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = task(tmp_path / "w.pth", in_chans=1)
    assert_gray_matches_rgb(ours, ref)


def test_bad_weights_are_named(tmp_path):
    torch.save(timm_vit(embed_dim=48, num_heads=4).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"pretrained .* has shape .*48.*needs.*32"):
        task(tmp_path / "wide.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        task(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk" * 10)
    with pytest.raises(ValueError, match="not a valid checkpoint.*junk.pth") as info:
        task(tmp_path / "junk.pth")
    assert "weights_only=False" not in str(info.value)  # torch's advice to load it unsafely
    (tmp_path / "note.pth").write_text("weights\n")  # text: torch reads it as a pickle and refuses
    with pytest.raises(ValueError, match="note.pth") as info:
        task(tmp_path / "note.pth")
    assert "weights_only=False" not in str(info.value)
    # deeper than the model: the extra blocks must not be dropped silently
    torch.save(timm_vit(depth=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(ValueError, match="3 blocks, the model has 2: set n_layers to 3"):
        task(tmp_path / "deep.pth")
    # a tx-suite Lightning checkpoint is not timm weights: say so, not "lack cls_token ..."
    lightning = {"state_dict": {f"model.{k}": v for k, v in timm_vit().state_dict().items()},
                 "pytorch-lightning_version": "2.6.0"}
    torch.save(lightning, tmp_path / "run.ckpt")
    with pytest.raises(ValueError, match="run.ckpt is a Lightning checkpoint.*--ckpt_path"):
        task(tmp_path / "run.ckpt")


@pytest.mark.parametrize("name", ["crossvit_tiny_240", "xcit_tiny_12_p16_224", "vit_small_patch16_18x2_224",
                                  "swin_tiny_patch4_window7_224"])
def test_timm_model_names_of_other_architectures_are_refused(name):
    """The first three crashed with AttributeError / TypeError while reading their sizes."""
    from tx_suite.tasks.classification import timm_arch

    with pytest.raises(ValueError, match=f"timm model '{name}' is not a VisionTransformer of timm's standard Block"):
        timm_arch(name)
    assert timm_arch("deit_tiny_distilled_patch16_224") == timm_arch("vit_tiny_patch16_224")


def test_pretrained_timm_offline_fails_fast(monkeypatch):
    import socket

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(ConnectionError, match="cannot reach huggingface.co"):
        ImageClassification(backbone="tx", timm_model="vit_tiny_patch16_224", pretrained="timm", img_size=224,
                            in_chans=3, num_classes=10)
    # a hybrid (conv stem) cannot take timm ViT weights: said before any download is tried, so
    # an offline user sees the real reason, not the network error
    with pytest.raises(ValueError, match="conv stem"):
        ImageClassification(backbone="tx", timm_model="vit_tiny_patch16_224", pretrained="timm", img_size=224,
                            in_chans=3, num_classes=10, stem_channels=[8])


def test_fine_tuned_checkpoint_needs_no_pretrained_file(tmp_path, runs_dir, capsys):
    """The checkpoint holds every weight: testing or resuming a fine-tuned run must not re-read
    its `pretrained` source (deleted here; offline, `pretrained: timm` would fail the same way)."""
    from tx_suite.cli.main import main

    weights = tmp_path / "start.pth"
    torch.save(timm_vit(depth=1).state_dict(), weights)
    size = ["--config", "experiments/vision/mnist_vit.yaml", "--model.init_args.d_model=32",
            "--model.init_args.n_layers=1", "--model.init_args.n_heads=4", "--model.init_args.d_ff=64",
            "--model.init_args.compile=false", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    assert main(["fit", *size, f"--model.init_args.pretrained={weights}", "--data.init_args.limit_train=128",
                 "--data.init_args.batch_size=64", "--data.init_args.val_size=64", "--trainer.max_epochs=1",
                 "--trainer.limit_val_batches=1"]) == 0
    weights.unlink()
    assert main(["test", *size, "--ckpt_path", "last", "--trainer.limit_test_batches=1"]) == 0
    assert main(["fit", *size, "--ckpt_path", "last", f"--model.init_args.pretrained={weights}",
                 "--data.init_args.limit_train=128", "--data.init_args.batch_size=64", "--data.init_args.val_size=64",
                 "--trainer.max_epochs=2", "--trainer.limit_val_batches=1"]) == 0
    assert "not loading model.pretrained" in capsys.readouterr().err


#: timm ViT features our ViT (and the timm twin of the task's size) has no place for: loading
#: without them would fine-tune a different network, so they are refused naming the weight.
FOREIGN = {
    "layer_scale": (dict(init_values=1e-5), r"blocks\.0\.ls1\.gamma.*layer scale"),
    "qk_norm": (dict(qk_norm=True), r"blocks\.0\.attn\.q_norm\.weight.*QK-norm"),
    "registers": (dict(reg_tokens=4), r"reg_token.*register tokens"),
    "deit3": (dict(no_embed_class=True), r"pos_embed has 49 rows.*no_embed_class"),
    "map_pool": (dict(global_pool="map"), r"attn_pool\..*attention pooling"),
    # named a 50-row pos_embed "not a square grid" (its 7 x 7 grid + CLS + distillation token)
    "deit_distilled": (dict(distilled=True), r"dist_token.*distillation token"),
}


@pytest.mark.parametrize("backbone", ["tx", "timm"])
@pytest.mark.parametrize("feature", list(FOREIGN))
@pytest.mark.parametrize("img_size", [28, 36])  # 36: the position embedding would be resampled
def test_weights_of_a_timm_feature_the_vit_lacks_are_refused(tmp_path, backbone, feature, img_size):
    from tx_suite.models.vit import load_timm_checkpoint

    kw, message = FOREIGN[feature]
    sd = timm_vit(**kw).state_dict()
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=message):
        task(tmp_path / "w.pth", backbone=backbone, img_size=img_size)
    model = task(None, backbone=backbone, img_size=img_size, pretrained=None).model
    with pytest.raises(ValueError, match=message):
        load_timm_checkpoint(model, sd)


def test_checkpoint_filter_refuses_registers_whatever_the_key_order():
    """Our own converter: with keys sorted (as in a safetensors file) pos_embed comes before
    reg_token; it must still name reg_token, not fail on the position embedding's row count."""
    from tx_suite.models.vit import VisionTransformer, checkpoint_filter_fn

    ours = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, d_model=32, n_layers=2,
                             n_heads=4, mlp_ratio=2.0)
    sd = dict(sorted(timm_vit(reg_tokens=4).state_dict().items()))
    with pytest.raises(ValueError, match="'reg_token' .register tokens"):
        checkpoint_filter_fn(sd, ours)
    with pytest.raises(ValueError, match="pos_embed has 49 rows.*no_embed_class"):
        checkpoint_filter_fn(timm_vit(no_embed_class=True).state_dict(), ours)


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_a_head_is_dropped_when_the_model_has_none(backbone):
    """A feature extractor (num_classes=0) takes a classifier's weights but its head."""
    from tx_suite.models.vit import load_timm_checkpoint
    from tx_suite.tasks.classification import build_backbone

    ref = timm_vit()
    ours = build_backbone(backbone, num_classes=0, img_size=28, in_chans=1, **SIZE).eval()
    load_timm_checkpoint(ours, ref.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (ours(x) - ref.forward_head(ref.forward_features(x), pre_logits=True)).abs().max() < 1e-5


def test_the_config_names_the_grid_of_non_square_pretrained_weights(tmp_path):
    """``pretrained_grid_size`` (a config key) is ``old_grid_size``: 2 x 8 weights resampled to
    the 7 x 7 grid as 2 x 8 ones; without it they are read as a square 4 x 4 grid."""
    from tx_suite.models.vit import VisionTransformer, load_timm_checkpoint

    wide = timm_vit(img_size=(8, 32))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    expected = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, d_model=32,
                                 n_layers=2, n_heads=4, mlp_ratio=2.0)
    load_timm_checkpoint(expected, wide.state_dict(), old_grid_size=(2, 8))
    ours = task(tmp_path / "wide.pth", pretrained_grid_size=[2, 8])
    torch.testing.assert_close(ours.model.patch_embed.pos_embed, expected.patch_embed.pos_embed)
    square = task(tmp_path / "wide.pth")
    assert (square.model.patch_embed.pos_embed - expected.patch_embed.pos_embed).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", ["tx", "timm"])
@pytest.mark.parametrize("setting", [dict(patch_size=0), dict(n_heads=0), dict(n_layers=-1), dict(d_ff=0),
                                     dict(img_size=-28), dict(num_classes=-1), dict(d_model=30, n_heads=4)])
def test_impossible_vit_sizes_are_config_errors(backbone, setting):
    """patch_size 0 / n_heads 0 raised ZeroDivisionError, n_layers -1 built a zero-layer ViT."""
    args = {**SIZE, "backbone": backbone, "img_size": 28, "in_chans": 1, "num_classes": 10, **setting}
    with pytest.raises(ValueError, match=r"must be >= [01]|not divisible"):
        ImageClassification(**args)


def test_label_smoothing_outside_zero_one_is_refused():
    from tx_suite.tasks.translation import TranslationTask

    with pytest.raises(ValueError, match=r"model.label_smoothing must be in \[0, 1\), got 2"):
        ImageClassification(**SIZE, img_size=28, in_chans=1, num_classes=10, label_smoothing=2)
    with pytest.raises(ValueError, match=r"model.label_smoothing must be in \[0, 1\), got -0.1"):
        TranslationTask(vocab_size=100, d_model=16, n_heads=2, d_ff=32, label_smoothing=-0.1)
