"""The vision experiment configs: each builds its task and datamodule, and they agree; one runs end
to end through `tx-suite fit` and `tx-suite classify`."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cli_fixtures import build
from tx_suite.utils.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "vision"
CONFIGS = sorted(p.name for p in EXPERIMENTS.glob("*.yaml") if p.name != "base.yaml")


def test_every_task_has_a_config():
    assert {"mnist_vit.yaml", "mnist_vit_timm.yaml", "mnist_vit_30min.yaml", "cifar10_vit.yaml",
            "cifar10_vit_timm.yaml", "cifar100_vit.yaml", "mnist_vit_hybrid.yaml",
            "mnist_vit_hybrid_30min.yaml", "mnist_vit_hybrid_deep.yaml", "mnist_vit_hybrid_deep_30min.yaml",
            "mnist_vit_hybrid_deep_erasing.yaml", "mnist_vit_hybrid_deep_erasing_full.yaml",
            "mnist_vit_hybrid_deep_affine20_full.yaml", "mnist_vit_hybrid_deep_affine20_full_60ep.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_matching_task_and_datamodule(name):
    cfg = load_config(EXPERIMENTS / name)
    task, data = build(cfg["model"]), build(cfg["data"])
    hp = task.hparams
    assert hp.num_classes == data.num_classes and hp.in_chans == data.in_chans and hp.img_size == data.img_size
    assert hp.backbone == ("timm" if "timm" in name else "tx")
    # without a validation split (val_size 0) there is no val/acc to rank checkpoints by
    monitor = "val/acc" if data.val_size else None
    assert cfg["checkpoint"] == {**cfg["checkpoint"], "monitor": monitor, "mode": "max"}


def test_timm_baselines_differ_only_in_the_backbone():
    for ours, theirs in (("mnist_vit.yaml", "mnist_vit_timm.yaml"), ("cifar10_vit.yaml", "cifar10_vit_timm.yaml")):
        a, b = load_config(EXPERIMENTS / ours), load_config(EXPERIMENTS / theirs)
        a_args, b_args = dict(a["model"]["init_args"]), dict(b["model"]["init_args"])
        assert (a_args.pop("backbone"), b_args.pop("backbone")) == ("tx", "timm")
        assert a_args == b_args and a["data"] == b["data"] and a["trainer"] == b["trainer"]


def test_hybrid_configs_change_only_the_stem_and_schedule():
    # The hybrid results in RESULTS.md are compared with mnist_vit's: only the front-end (and
    # the schedule: epochs, warm-up) may differ, not the encoder, optimiser or augmentation.
    stem_keys = ("patch_size", "stem_channels", "stem_strides")
    plain = load_config(EXPERIMENTS / "mnist_vit.yaml")
    for name in ("mnist_vit_hybrid.yaml", "mnist_vit_hybrid_30min.yaml", "mnist_vit_hybrid_deep.yaml"):
        hybrid = load_config(EXPERIMENTS / name)
        args = dict(hybrid["model"]["init_args"])
        stem = {k: args.pop(k) for k in stem_keys}
        assert stem["patch_size"] == 1 and len(stem["stem_channels"]) == len(stem["stem_strides"])
        args.pop("warmup_epochs")
        expected = {k: v for k, v in plain["model"]["init_args"].items() if k not in (*stem_keys, "warmup_epochs")}
        assert args == expected, name
        assert hybrid["data"] == plain["data"], name


def test_erasing_configs_add_only_random_erasing_and_a_schedule_to_the_deep_hybrid():
    deep = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep.yaml")
    erasing = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_erasing.yaml")
    augment = dict(erasing["data"]["init_args"]["augment"])
    assert augment.pop("random_erasing") == 0.25
    assert augment == deep["data"]["init_args"]["augment"]
    for section in ("model", "trainer", "checkpoint"):
        assert erasing[section] == deep[section], section
    # the 30-minute variant: the erasing config with a shorter schedule (epochs, warm-up, max_time)
    short = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_30min.yaml")
    assert short["data"] == erasing["data"]
    args = dict(short["model"]["init_args"])
    assert args.pop("warmup_epochs") == 1
    assert args == {k: v for k, v in erasing["model"]["init_args"].items() if k != "warmup_epochs"}
    trainer = dict(short["trainer"])
    assert trainer.pop("max_time") == "00:00:30:00" and trainer.pop("max_epochs") < 32
    assert trainer == {k: v for k, v in erasing["trainer"].items() if k != "max_epochs"}


def test_full_data_config_drops_only_the_validation_split():
    # RESULTS.md compares it with the erasing run, so nothing else may change.
    erasing = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_erasing.yaml")
    full = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_erasing_full.yaml")
    data = dict(full["data"]["init_args"])
    assert data.pop("val_size") == 0 and erasing["data"]["init_args"]["val_size"] == 5000
    assert data == {k: v for k, v in erasing["data"]["init_args"].items() if k != "val_size"}
    assert full["checkpoint"] == {**erasing["checkpoint"], "monitor": None}
    assert full["trainer"] == erasing["trainer"]  # val_size 0 turns the validation loop off by itself
    assert full["model"] == erasing["model"]
    dm = build(full["data"])
    dm.setup("fit")
    assert len(dm.train_set) == 60000 and dm.val_dataloader() == []


def test_affine20_config_widens_only_the_affine_range_of_the_full_data_config():
    # RESULTS.md reads its result against the erasing_full runs: one factor, the augmentation range.
    full = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_erasing_full.yaml")
    wide = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_affine20_full.yaml")
    augment, base_augment = dict(wide["data"]["init_args"]["augment"]), dict(full["data"]["init_args"]["augment"])
    assert (augment.pop("affine_degrees"), augment.pop("affine_translate")) == (20, 0.2)
    assert (base_augment.pop("affine_degrees"), base_augment.pop("affine_translate")) == (15, 0.1)
    assert augment == base_augment
    for section in ("model", "trainer", "checkpoint"):
        assert wide[section] == full[section], section
    assert {k: v for k, v in wide["data"]["init_args"].items() if k != "augment"} == {
        k: v for k, v in full["data"]["init_args"].items() if k != "augment"}


def test_60_epoch_config_lengthens_only_the_schedule_of_the_affine20_config():
    # RESULTS.md reads it against the 32-epoch affine20 seeds: one factor, the cosine's length
    # (the warm-up stays 3 epochs; the cosine spans the rest).
    short = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_affine20_full.yaml")
    long = load_config(EXPERIMENTS / "mnist_vit_hybrid_deep_affine20_full_60ep.yaml")
    assert (short["trainer"]["max_epochs"], long["trainer"]["max_epochs"]) == (32, 60)
    assert long["trainer"] == {**short["trainer"], "max_epochs": 60}
    for section in ("model", "data", "checkpoint"):
        assert long[section] == short[section], section


def _tiny_fit(config: str, *extra: str) -> list[str]:
    """Two epochs of 2 batches of ``config`` through the CLI as run ``t``; the warnings it raised."""
    from tx_suite.cli.main import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(EXPERIMENTS / config), *extra,
                     "--trainer.max_epochs=2", "--data.init_args.limit_train=128", "--data.init_args.batch_size=64",
                     "--trainer.logger=false", "--model.init_args.compile=false",
                     "--trainer.enable_progress_bar=false", "--run_id=t"]) == 0
    return [str(w.message) for w in caught]


def test_fit_without_a_validation_split_through_the_cli(runs_dir):
    """val_size 0: fit runs with no validation loop and writes last.ckpt of the final epoch."""
    from tx_suite.utils.checkpoint import load_checkpoint

    said = _tiny_fit("mnist_vit_hybrid_deep_erasing_full.yaml")
    # the empty validation loader is intended: the config says so (limit_val_batches 0), no warning
    assert not [m for m in said if "across ranks is zero" in m]
    ckpt = load_checkpoint(runs_dir / "mnist_vit_hybrid_deep_erasing_full" / "t" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4


@pytest.mark.parametrize("no_val", ["--data.init_args.val_size=0", "--trainer.limit_val_batches=0"])
def test_a_run_without_validation_makes_its_last_epoch_best(runs_dir, no_val):
    """A config that monitors val/acc, run with no validation batches: best.ckpt is the final epoch
    (otherwise `--ckpt_path best` would fall back to an older run), with one warning saying why."""
    from tx_suite.utils.checkpoint import load_checkpoint

    messages = _tiny_fit("mnist_vit_hybrid_deep_erasing.yaml", no_val)
    said = [m for m in messages if "RunCheckpoint" in m]
    assert len(said) == 1 and "no validation batches" in said[0], said
    # val_size 0 alone turns the validation loop off: no warning about an empty loader list
    assert not [m for m in messages if "across ranks is zero" in m]
    best = load_checkpoint(runs_dir / "mnist_vit_hybrid_deep_erasing" / "t" / "checkpoints" / "best.ckpt")
    assert best["epoch"] == 1 and best["global_step"] == 4


def test_validation_that_comes_later_still_chooses_best(runs_dir):
    """check_val_every_n_epoch 2, no sanity check, a save at every epoch end: epoch 1 has no val/acc
    yet, but validation is coming, so best.ckpt waits for it rather than taking the latest epoch."""
    from tx_suite.utils.checkpoint import load_checkpoint

    said = [m for m in _tiny_fit("mnist_vit_hybrid_deep_erasing.yaml", "--trainer.check_val_every_n_epoch=2",
                                 "--trainer.num_sanity_val_steps=0", "--checkpoint.save_on_train_epoch_end=true",
                                 "--trainer.limit_val_batches=2") if "RunCheckpoint" in m]
    assert len(said) == 1 and "the key is missing at step 2" in said[0], said
    best = load_checkpoint(runs_dir / "mnist_vit_hybrid_deep_erasing" / "t" / "checkpoints" / "best.ckpt")
    state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert best["epoch"] == 1 and state["best_model_score"] is not None


def test_fit_then_classify_through_the_cli(subprocess_env, runs_dir, tmp_path):
    from PIL import Image

    from tx_suite.data.mnist import MNISTDataModule

    cmd = [sys.executable, "-m", "tx_suite", "fit", "--config", str(EXPERIMENTS / "mnist_vit.yaml"),
           "--trainer.max_epochs=1", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
           "--data.init_args.limit_train=128", "--data.init_args.batch_size=64", "--trainer.logger=false",
           "--model.init_args.compile=false",  # torch.compile: test_classify_task.py (a minute to build here)
           "--trainer.enable_progress_bar=false", "--run_id=t"]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = runs_dir / "mnist_vit" / "t" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    dm = MNISTDataModule()
    dm.setup("test")
    png = tmp_path / "digit.png"
    Image.fromarray(dm.test_set.data[0].numpy(), mode="L").save(png)
    proc = subprocess.run([sys.executable, "-m", "tx_suite", "classify", "--ckpt", str(ckpt), str(png), "--topk", "2"],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{png}: ") and proc.stdout.count("(") == 2
