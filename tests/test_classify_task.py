"""The ImageClassification task on real MNIST: training, recipe (weight decay, schedule), EMA, Mixup."""

import math
import re
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from test_vision_helpers import mnist, tiny_task, trainer


@pytest.fixture(scope="module")
def fixed_batch():
    dm = mnist()
    dm.setup("fit")
    x, y = next(iter(torch.utils.data.DataLoader(dm.val_set, batch_size=256)))
    return x, y


def _loss(task, batch):
    with torch.no_grad():
        return F.cross_entropy(task.model(batch[0]), batch[1]).item()


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_training_steps_lower_the_loss(tmp_path, fixed_batch, backbone):
    pl.seed_everything(0, verbose=False)
    task = tiny_task(backbone)
    before = _loss(task, fixed_batch)
    trainer(tmp_path, steps=60).fit(task, mnist(limit_train=64 * 60))
    after = _loss(task, fixed_batch)
    assert before > 2.1  # chance level is ln(10) = 2.30
    assert after < 0.8 * before, (before, after)


NO_DECAY = {
    "timm": {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"},
    "tx": {"patch_embed.pos_embed", "patch_embed.cls_token", "encoder.norm.weight",
           "encoder.layers.0.self_attn.qkv_proj.bias"},
}
DECAY = {
    "timm": {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"},
    "tx": {"patch_embed.proj.weight", "encoder.layers.0.self_attn.qkv_proj.weight", "head.weight"},
}


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_optimizer_and_schedule(tmp_path, backbone):
    """AdamW without decay on norms, biases, pos_embed, cls_token; warm-up then cosine to min_lr."""
    task = tiny_task(backbone, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=1.0, weight_decay=0.05)
    tr = trainer(tmp_path, steps=-1, max_epochs=4, limit_train_batches=5, limit_val_batches=0)
    lrs = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    tr.callbacks.append(Record())
    tr.fit(task, mnist(limit_train=64 * 5))
    assert len(lrs) == 20
    assert lrs[0] == pytest.approx(1e-6)
    assert max(lrs) == pytest.approx(lrs[5]) and lrs[5] > 0.9e-3  # peak right after 1 epoch of warm-up
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] < 0.05e-3

    opt = tr.optimizers[0]
    names = {id(p): n for n, p in task.model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert NO_DECAY[backbone] <= plain
    assert DECAY[backbone] <= decayed
    assert len(decayed) + len(plain) == len(names)


@pytest.mark.parametrize("max_epochs, max_steps, accumulate, warmup_epochs, batches", [
    (30, 10, 1, 1.0, 4),  # max_steps ends the run long before max_epochs
    (-1, 10, 1, 1.0, 4),  # no epoch limit at all
    (30, 6, 2, 1.5, 4),   # accumulation: 2 optimizer steps per epoch of 4 batches
    (30, 6, 2, 1.0, 5),   # 3 optimizer steps per epoch of 5 batches: the last, incomplete accumulation steps too
    (30, 6, 1, 0.5, 3),   # half an epoch of 3 steps: the warm-up rounds up, to 2 steps
    (30, 4, 1, 5.0, 4),   # a warm-up longer than the run: cut so the last step still reaches the peak
])
def test_warmup_epochs_count_epochs_of_the_loader_when_max_steps_ends_the_run(
        tmp_path, max_epochs, max_steps, accumulate, warmup_epochs, batches):
    task = tiny_task("tx", lr=1e-3, warmup_lr=1e-6, warmup_epochs=warmup_epochs)
    tr = trainer(tmp_path, steps=max_steps, max_epochs=max_epochs, limit_train_batches=batches, limit_val_batches=0,
                 accumulate_grad_batches=accumulate)
    lrs = []

    class Record(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            lrs.append(optimizer.param_groups[0]["lr"])

    tr.callbacks.append(Record())
    tr.fit(task, mnist(limit_train=64 * batches))
    assert len(lrs) == max_steps
    per_epoch = math.ceil(batches / accumulate)  # optimizer steps per epoch
    peak = min(math.ceil(warmup_epochs * per_epoch), max_steps - 1)
    assert lrs.index(max(lrs)) == peak, lrs
    assert lrs[peak] == pytest.approx(1e-3)


EVAL_MODE_WARNING = "module(s) in eval mode at the start of training"


def test_ema_and_mixup(tmp_path, recwarn):
    pl.seed_everything(0, verbose=False)
    task = tiny_task("timm", ema_decay=0.9, mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, label_smoothing=0.1)
    tr = trainer(tmp_path, steps=8)
    tr.fit(task, mnist(limit_train=64 * 8))
    # The EMA copy is in eval mode on purpose: Lightning's warning about it is hidden.
    assert not [w for w in recwarn if EVAL_MODE_WARNING in str(w.message)]
    assert torch.isfinite(tr.callback_metrics["train/loss"])
    ema, live = task.ema.module.state_dict(), task.model.state_dict()
    assert not torch.equal(ema["head.weight"], live["head.weight"])
    assert task.inference_model is task.ema.module


def test_eval_mode_warning_still_names_other_modules(tmp_path):
    """Only the EMA copy is exempt: a frozen module elsewhere still gets Lightning's warning, and
    the filter is gone after the fit."""
    task = tiny_task("tx", ema_decay=0.9)
    task.model.head.eval()
    with pytest.warns(UserWarning, match=re.escape(EVAL_MODE_WARNING)):
        trainer(tmp_path, steps=1).fit(task, mnist(limit_train=64))
    assert task._ema_warning_filter is None


def test_data_and_model_sizes_must_agree(tmp_path):
    task = tiny_task("timm", num_classes=7)
    with pytest.raises(ValueError, match="model.num_classes=7 but the data gives 10"):
        trainer(tmp_path, steps=1).fit(task, mnist(limit_train=64))


def test_mixup_with_an_odd_batch_size_is_refused_before_training(tmp_path):
    task = tiny_task("timm", mixup={"mixup_alpha": 0.8})
    dm = mnist(limit_train=64)
    dm.batch_size = 31
    with pytest.raises(ValueError, match="model.mixup needs an even data.batch_size, got 31"):
        trainer(tmp_path, steps=1).fit(task, dm)


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which(__import__("os").environ.get("CXX") or "g++") is None,
                    reason="TorchInductor needs a C++ compiler ($CXX or g++); the task refuses compile without one")
def test_compile_trains_like_eager(tmp_path):
    """``compile=True`` runs the training forward through torch.compile (inductor): same losses as
    eager from the same weights and batches, and the same checkpoint keys. ~1 min on 2 cores."""
    import torch._dynamo

    pl.seed_everything(0, verbose=False)
    eager = tiny_task("tx")
    compiled = tiny_task("tx", compile=True)
    compiled.load_state_dict(eager.state_dict())
    losses = {}

    class Record(pl.Callback):
        def __init__(self, key):
            self.key = key
            losses[key] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            losses[self.key].append(float(outputs["loss"]))

    torch._dynamo.reset()
    for key, task in (("eager", eager), ("compiled", compiled)):
        pl.seed_everything(1, verbose=False)
        tr = trainer(tmp_path, steps=6, limit_val_batches=0)
        tr.callbacks.append(Record(key))
        tr.fit(task, mnist(limit_train=64 * 6))
    assert eager._compiled_forward is None and compiled._compiled_forward is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # inductor really ran
    assert losses["compiled"][0] == pytest.approx(losses["eager"][0], rel=1e-5)
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
    assert losses["eager"][-1] < losses["eager"][0]
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_compile_without_a_cxx_compiler_says_so(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*compile: false"):
        trainer(tmp_path, steps=1).fit(tiny_task("tx", compile=True), mnist(limit_train=64))
    # Inductor on Linux tries $CXX or g++ only: a clang++ or c++ on the PATH passed the check, then
    # the first compiled step failed in a long traceback
    if sys.platform != "darwin":
        monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name in ("clang++", "c++") else None)
        with pytest.raises(RuntimeError, match="g\\+\\+ not found"):
            trainer(tmp_path, steps=1).fit(tiny_task("tx", compile=True), mnist(limit_train=64))


def test_predict_writes_top_class_per_image_in_dataset_order(tmp_path):
    from tx_suite.tasks.callbacks import PredictionWriter

    task = tiny_task("tx")
    out = tmp_path / "pred"
    tr = trainer(tmp_path, steps=1, callbacks=[PredictionWriter(out)], limit_predict_batches=2)
    dm = mnist(batch_size=16)
    tr.predict(task, datamodule=dm, return_predictions=False)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,label,probability" and len(rows) > 16
    index, labels, probs = zip(*(r.split(",") for r in rows[1:]))
    assert [int(i) for i in index] == list(range(len(rows) - 1))
    classes = task.meta.get("classes") or list(range(10))  # names from the data when it has them
    assert set(labels) <= {str(c) for c in classes} and all(0.1 <= float(p) <= 1 for p in probs)
    # each row is the model's own top class of that test image, with its softmax probability
    x = torch.stack([dm.test_set[i][0] for i in range(len(index))])
    with torch.no_grad():
        want_p, want_c = task.eval()(x).softmax(-1).max(-1)
    assert list(labels) == [str(classes[c]) for c in want_c.tolist()]
    assert [float(p) for p in probs] == pytest.approx(want_p.tolist(), abs=1e-5)


def test_a_class_absent_from_the_evaluated_slice_has_no_accuracy(tmp_path):
    # The first 8 MNIST test digits are 7 2 1 0 4 1 4 9: classes 3, 5, 6, 8 have no example, and
    # torchmetrics' per-class accuracy gives them 0, which read as "always wrong" on the dashboard.
    task = tiny_task("tx")
    tr = trainer(tmp_path, steps=1, limit_test_batches=1)
    tr.test(task, datamodule=mnist(eval_batch_size=8), verbose=False)
    logged = {k for k in tr.callback_metrics if k.startswith("test/acc_")}
    assert logged == {f"test/acc_{c}" for c in (0, 1, 2, 4, 7, 9)}
    acc = task.last_acc_class["test"]
    assert acc[[3, 5, 6, 8]].isnan().all() and not acc[[0, 1, 2, 4, 7, 9]].isnan().any()


def test_a_run_trained_further_follows_the_schedule_of_its_new_length(tmp_path):
    # timm's scheduler state holds t_initial: restored, the 4 new steps would all run at min_lr.
    tr = trainer(tmp_path, steps=4, limit_val_batches=0)
    tr.fit(tiny_task("tx", warmup_epochs=0.0), mnist(limit_train=64 * 8))
    tr.save_checkpoint(tmp_path / "four.ckpt")
    tr = trainer(tmp_path, steps=8, limit_val_batches=0, max_epochs=3)
    task = tiny_task("tx", warmup_epochs=0.0)
    tr.fit(task, mnist(limit_train=64 * 8), ckpt_path=str(tmp_path / "four.ckpt"), weights_only=True)
    sched = tr.lr_scheduler_configs[0].scheduler
    assert sched.t_initial == 8 and tr.global_step == 8
    lr_at_5 = sched._get_lr(5)[0]
    assert task.hparams.min_lr < lr_at_5 < task.hparams.lr  # mid-cosine, not at the floor


def test_label_smoothing_reaches_the_loss_with_and_without_mixup(tmp_path):
    # timm's Mixup defaults to label_smoothing=0.1: the task's own value must replace it.
    assert tiny_task("tx", label_smoothing=0.0, mixup={"mixup_alpha": 0.8}).mixup_fn.label_smoothing == 0.0
    assert tiny_task("tx", label_smoothing=0.2, mixup={"mixup_alpha": 0.8}).mixup_fn.label_smoothing == 0.2

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            x, y = batch
            with torch.no_grad():
                self.expected = F.cross_entropy(pl_module.model(x).float(), y, label_smoothing=0.2)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.got = outputs["loss"].detach()

    check = Check()
    trainer(tmp_path, steps=1, callbacks=[check]).fit(tiny_task("tx", label_smoothing=0.2), mnist(limit_train=64))
    torch.testing.assert_close(check.got, check.expected)


def test_confusion_matrix_covers_one_evaluation_only(tmp_path):
    task = tiny_task("tx")
    tr = trainer(tmp_path, steps=1, limit_val_batches=2)
    dm = mnist(eval_batch_size=50)
    for _ in range(2):
        tr.validate(task, datamodule=dm, verbose=False)
        assert int(task.last_confmat["val"].sum()) == 100  # 2 batches of 50, not accumulated


def test_the_ema_is_timm_modelemav3_of_every_step_and_is_what_forward_and_predict_use(tmp_path, fixed_batch):
    """The EMA copy equals timm's ModelEmaV3 (decay and warm-up as configured) replayed over the
    weights after each optimizer step, and evaluation / prediction read it, not the live weights."""
    from copy import deepcopy

    from timm.utils import ModelEmaV3

    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", ema_decay=0.9)
    ref = ModelEmaV3(deepcopy(task.model), decay=0.9, use_warmup=True)
    states = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            states.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})

    trainer(tmp_path, steps=3, limit_val_batches=0, callbacks=[Record()]).fit(task, mnist(limit_train=64 * 3))
    scratch = deepcopy(task.model)
    for step, state in enumerate(states, 1):
        scratch.load_state_dict(state)
        ref.update(scratch, step=step)
    ema = task.ema.module.state_dict()
    for key, value in ref.module.state_dict().items():
        torch.testing.assert_close(ema[key], value, msg=key)
    x = fixed_batch[0][:16]
    with torch.no_grad():
        ema_logits, live_logits = task.ema.module(x), task.model(x)
        assert not torch.allclose(ema_logits, live_logits, atol=1e-3)
        torch.testing.assert_close(task(x), ema_logits)
        torch.testing.assert_close(task.predict_step(x, 0), ema_logits.softmax(-1))


def test_mixup_feeds_the_mixed_images_and_takes_the_loss_against_the_mixed_targets(tmp_path):
    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", mixup={"mixup_alpha": 0.8, "cutmix_alpha": 0.0})
    seen = {}
    mix, forward = task.mixup_fn, task.model.forward

    def recording_mix(x, y):
        seen["x"], seen["y"] = x.clone(), y.clone()
        mixed, soft = mix(x, y)
        seen["mixed"], seen["soft"] = mixed.clone(), soft.clone()
        return mixed, soft

    def recording_forward(x):
        seen["input"] = x.detach().clone()
        logits = forward(x)
        seen["logits"] = logits.detach().clone()
        return logits

    class Loss(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            seen["loss"] = outputs["loss"].detach()

    task.mixup_fn, task.model.forward = recording_mix, recording_forward
    trainer(tmp_path, steps=1, limit_val_batches=0, callbacks=[Loss()]).fit(task, mnist(limit_train=64))
    x, y, mixed, soft = seen["x"], seen["y"], seen["mixed"], seen["soft"]
    assert torch.equal(seen["input"], mixed) and not torch.equal(mixed, x)  # the model sees the mixed images
    # Mixup pairs each image with its mirror in the batch: targets lam * y + (1 - lam) * y.flip(0).
    i = int(torch.nonzero(y != y.flip(0))[0])
    lam = float(soft[i, y[i]])
    assert 0 < lam < 1
    one_hot = F.one_hot(y, 10).float()
    torch.testing.assert_close(soft, lam * one_hot + (1 - lam) * one_hot.flip(0))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    expected = torch.sum(-soft * F.log_softmax(seen["logits"].float(), -1), -1).mean()
    torch.testing.assert_close(seen["loss"], expected)


def test_confusion_matrix_rows_are_true_classes_and_per_class_accuracy_is_recall(tmp_path):
    """Against a hand count of the predictions: confmat[true, predicted]; per-class accuracy is
    correct / examples of that class (not / predictions of it); the report's JSON agrees."""
    import json

    from tx_suite.tasks.callbacks.vision_report import ClassificationReport

    pl.seed_everything(0, verbose=False)
    task = tiny_task("tx", label_smoothing=0.1)
    tr = trainer(tmp_path, steps=1, limit_val_batches=1)
    dm = mnist(eval_batch_size=200)
    tr.validate(task, datamodule=dm, verbose=False)
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        logits = task(x)
    pred = logits.argmax(-1)
    # the validation loss is the plain cross-entropy (label smoothing is a training device)
    assert float(tr.callback_metrics["val/loss"]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    expected = torch.zeros(10, 10, dtype=torch.long).index_put_((y, pred), torch.ones_like(y), accumulate=True)
    assert not torch.equal(expected, expected.T)
    assert torch.equal(task.last_confmat["val"], expected)
    recall = expected.diag() / expected.sum(1)
    torch.testing.assert_close(task.last_acc_class["val"], recall.float())
    path = ClassificationReport().report(tr, task, "val")["per_class"]
    per_class = json.loads(open(path).read())
    assert [per_class[str(c)]["count"] for c in range(10)] == torch.bincount(y, minlength=10).tolist()
    assert [per_class[str(c)]["accuracy"] for c in range(10)] == pytest.approx(recall.tolist())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_both_backbones_pool_alike(pool):
    """``pool`` means the same for ours and timm's: the same weights give the same logits."""
    from tx_suite.models.vit import load_timm_state_dict
    from tx_suite.tasks.classification import build_backbone

    torch.manual_seed(0)
    args = dict(num_classes=10, img_size=28, in_chans=1, patch_size=7, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                pool=pool)
    ref, ours = build_backbone("timm", **args).eval(), build_backbone("tx", **args).eval()
    assert ours.global_pool == ref.global_pool == ("token" if pool == "cls" else "avg")
    load_timm_state_dict(ours, ref.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backbone", ["tx", "timm"])
def test_the_mlp_has_exactly_d_ff_units(backbone):
    # both ViTs build int(d_model * mlp_ratio) units, and 115 / 56 * 56 = 114.99... in floating
    # point: d_ff 115 trained 114 units without a word (6,015 such pairs for d_model 8..1024)
    from tx_suite.models.vit import load_timm_checkpoint, timm_twin
    from tx_suite.tasks.classification import build_backbone

    model = build_backbone(backbone, num_classes=10, img_size=28, in_chans=1, patch_size=7, d_model=56,
                           n_layers=1, n_heads=4, d_ff=115)
    fc1 = model.blocks[0].mlp.fc1 if backbone == "timm" else model.encoder.layers[0].ffn.fc1
    assert fc1.out_features == 115
    if backbone == "tx":  # timm weights of that size load into it (its timm twin has 115 units too)
        assert timm_twin(model).blocks[0].mlp.fc1.out_features == 115
        twin = build_backbone("timm", num_classes=10, img_size=28, in_chans=1, patch_size=7, d_model=56,
                              n_layers=1, n_heads=4, d_ff=115)
        load_timm_checkpoint(model, twin.state_dict())


def test_a_run_without_a_length_names_the_setting_the_cosine_needs(tmp_path):
    """max_epochs -1 and no max_steps: a bare OverflowError (int(inf)) at configure_optimizers."""
    tr = pl.Trainer(max_epochs=-1, max_time={"seconds": 30}, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="set trainer.max_steps or trainer.max_epochs"):
        tr.fit(tiny_task("tx"), mnist(limit_train=64))
