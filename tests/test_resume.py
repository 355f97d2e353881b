"""Crash recovery: a run SIGKILLed mid-epoch and resumed with --ckpt_path ends exactly as an
uninterrupted run with the same seed (tiny MNIST task, CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tx_suite.cli.main import main
from tx_suite.data.multi30k_datamodule import Multi30kDataModule
from tx_suite.utils.checkpoint import load_checkpoint
from tx_suite.utils.compare import load_run
from tx_suite.utils.resumable_loader import ResumableDataLoader

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")
# 8 steps an epoch, 2 epochs; last.ckpt every 3 steps and at each epoch end. Killed after step 13:
# resumes from 12, i.e. after batch 4 of epoch 1. Dropout stays on (0.1): the RNG stream must be
# restored exactly too.
KILL_AT = 13
COMMON = ["fit", "--config", TINY, "--trainer.enable_progress_bar=false", "--checkpoint.last_every_n_train_steps=3"]


def kill_mid_epoch(runs_dir: Path, env: dict[str, str], run_id: str, *extra: str) -> Path:
    """Run a fit in a subprocess that SIGKILLs itself after step KILL_AT; return its last.ckpt."""
    kill = '--trainer.callbacks+={"class_path": "cli_fixtures.KillAtStep", "init_args": {"step": %d}}' % KILL_AT
    proc = subprocess.run([sys.executable, "-m", "tx_suite", *COMMON, *extra, "--run_id", run_id, kill],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = runs_dir / "tiny_mnist" / run_id / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 12
    return last


def final_state(run: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(final val metrics from metrics.csv, weights in last.ckpt)."""
    series = load_run(run).series
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 16
    return {m: series[m][-1][1] for m in ("val/acc", "val/loss")}, ckpt["state_dict"]


def test_sigterm_is_an_interruption_not_a_finished_run(runs_dir, subprocess_env):
    """Lightning stops a fit on SIGTERM (timeout, docker stop, preemption) with a SystemExit without
    a code: it was recorded as finished with exit status 0, so `make quickstart` went on to test."""
    term = '--trainer.callbacks+={"class_path": "cli_fixtures.SignalAtStep", "init_args": {"step": 5}}'
    proc = subprocess.run([sys.executable, "-m", "tx_suite", *COMMON, "--run_id", "termed", term],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "continue this run with" in proc.stderr
    info = load_run(runs_dir / "tiny_mnist" / "termed").info
    assert info["status"] == "interrupted"
    assert load_checkpoint(runs_dir / "tiny_mnist" / "termed" / "checkpoints" / "last.ckpt")["global_step"] < 16


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(runs_dir, subprocess_env):
    resumable = ["--data.init_args.resumable=true"]
    assert main([*COMMON, *resumable, "--run_id", "uninterrupted"]) == 0
    last = kill_mid_epoch(runs_dir, subprocess_env, "killed", *resumable)
    saved = load_checkpoint(last)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved == [{"epoch": 1, "batches_served": 4}]  # the loader's position went into the checkpoint

    assert main([*COMMON, *resumable, "--ckpt_path", str(last)]) == 0  # continues runs/tiny_mnist/killed
    metrics, weights = final_state(runs_dir / "tiny_mnist" / "killed")
    ref_metrics, ref_weights = final_state(runs_dir / "tiny_mnist" / "uninterrupted")
    assert metrics == ref_metrics  # bit for bit
    for run in ("killed", "uninterrupted"):  # best.ckpt is still chosen at epoch ends only
        assert load_checkpoint(runs_dir / "tiny_mnist" / run / "checkpoints" / "best.ckpt")["global_step"] in (8, 16)
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), name


def test_control_plain_dataloader_does_not_resume_mid_epoch_exactly(runs_dir, subprocess_env):
    """The same crash with a plain shuffling DataLoader: the resumed epoch re-draws its order, so
    the result differs. This is what the resumable loader (and the test above) guard against."""
    assert main([*COMMON, "--run_id", "uninterrupted"]) == 0
    last = kill_mid_epoch(runs_dir, subprocess_env, "killed")
    with pytest.warns(UserWarning, match="not resumable"):
        assert main([*COMMON, "--ckpt_path", str(last)]) == 0
    metrics, weights = final_state(runs_dir / "tiny_mnist" / "killed")
    ref_metrics, ref_weights = final_state(runs_dir / "tiny_mnist" / "uninterrupted")
    assert any(not torch.equal(weights[k], v) for k, v in ref_weights.items())


def test_resumable_loader_skips_served_batches_and_keeps_the_order():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = ResumableDataLoader(data, batch_size=3, shuffle=True, seed=7)
    loader.sampler.set_epoch(2)
    full = [b[0].tolist() for b in loader]
    assert sorted(sum(full, [])) == list(range(10)) and len(loader) == 4
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_served": 2}

    fresh = ResumableDataLoader(data, batch_size=3, shuffle=True, seed=7)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)  # Lightning sets the epoch after creating the iterator
    assert [b[0].tolist() for b in fresh] == full[2:]
    assert fresh.state_dict()["batches_served"] == 4
    assert [b[0].tolist() for b in fresh] == full  # the skip applied once; the next epoch is whole
    fresh.sampler.set_epoch(3)
    assert [b[0].tolist() for b in fresh] != full  # a new order each epoch

    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)  # no global RNG draw when an epoch starts


def test_translation_loader_resumes_mid_epoch(tmp_path):
    """The Multi30k training loader (token-budget batches) skips the batches a checkpoint says were
    served, in the same epoch order, and only for the epoch it resumes."""
    dm = Multi30kDataModule(vocab_size=800, train_limit=400, max_tokens=1024, cache_dir=str(tmp_path))
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(3)
    full = [b["index"].tolist() for b in loader]
    assert len(full) == len(loader) > 4
    it = iter(loader)
    next(it), next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_served": 3}

    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    it = iter(fresh)
    fresh.batch_sampler.set_epoch(3)  # as Lightning: the iterator exists before the epoch is set
    assert [b["index"].tolist() for b in it] == full[3:]
    assert [b["index"].tolist() for b in fresh] == full  # the next pass is whole again
    assert dm.val_dataloader().batch_sampler.start_batch == 0  # evaluation loaders stay plain

    # Lightning sets the epoch through loader.sampler / loader.batch_sampler.sampler only; before
    # `TokenBudgetBatchSampler.sampler` existed, every epoch repeated epoch 0's batches.
    from lightning_fabric.utilities.data import _set_sampler_epoch

    fresh = dm.train_dataloader()
    _set_sampler_epoch(fresh, 4)
    assert fresh.batch_sampler.epoch == 4 and [b["index"].tolist() for b in fresh] != full


QUIET_FIT = ["--trainer.enable_progress_bar=false", "--checkpoint.last_every_n_train_steps=3",
             "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.limit_val_batches=0"]
TRANSLATION = ["fit", "--config", "experiments/translation/multi30k_de_en_quickstart.yaml",
               "--model.init_args.vocab_size=800", "--model.init_args.d_model=32", "--model.init_args.n_heads=2",
               "--model.init_args.d_ff=64", "--model.init_args.n_encoder_layers=1",
               "--model.init_args.n_decoder_layers=1", "--data.init_args.vocab_size=800",
               "--data.init_args.train_limit=300", "--data.init_args.max_tokens=1024",
               "--trainer.max_steps=16", "--trainer.max_time=null", *QUIET_FIT]
# 10 batches an epoch; DropPath, RandomAffine and EMA weights all on.
VISION = ["fit", "--config", "experiments/vision/mnist_vit.yaml", "--model.init_args.d_model=32",
          "--model.init_args.n_layers=1", "--model.init_args.n_heads=2", "--model.init_args.d_ff=64",
          "--model.init_args.compile=false", "--data.init_args.limit_train=640", "--data.init_args.batch_size=64",
          "--data.init_args.val_size=100", "--trainer.max_steps=16", "--checkpoint.monitor=train/loss",
          *(a for a in QUIET_FIT if a != "--trainer.logger=false")]  # metrics.csv: the epoch-level train/acc


@pytest.mark.parametrize("task", ["translation", "vision"])
def test_real_task_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(runs_dir, subprocess_env, tmp_path, task):
    """Killed after step 13, resumed from step 12 (mid-epoch, past the first epoch): the run ends
    with the uninterrupted run's weights, bit for bit. Translation: token-budget batches, dropout
    0.1. Vision: DropPath, random augmentation, EMA weights (updated in optimizer_step: at batch
    end, Lightning's mid-epoch checkpoint ran before the update and the resumed EMA lagged)."""
    if task == "translation":
        args, exp = [*TRANSLATION, f"--data.init_args.cache_dir={tmp_path}"], "multi30k_de_en_quickstart"
    else:
        args, exp = VISION, "mnist_vit"
    repo = Path(__file__).resolve().parents[1]
    env = {**subprocess_env, "WANDB_MODE": "disabled"}

    def fit(run_id: str, *extra: str, returncode: int = 0) -> None:
        proc = subprocess.run([sys.executable, "-m", "tx_suite", *args, "--run_id", run_id, *extra], env=env,
                              capture_output=True, text=True, timeout=300, cwd=repo)
        assert proc.returncode == returncode, proc.stderr[-2000:]

    kill = '--trainer.callbacks+={"class_path": "cli_fixtures.KillAtStep", "init_args": {"step": %d}}' % KILL_AT
    fit("killed", kill, returncode=-signal.SIGKILL)
    last = runs_dir / exp / "killed" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    if task == "translation":
        dm = Multi30kDataModule(vocab_size=800, train_limit=300, max_tokens=1024, cache_dir=str(tmp_path))
        dm.setup("fit")
        per_epoch = len(dm.train_dataloader())
    else:
        per_epoch = 10
    assert ckpt["global_step"] == 12 and state == {"epoch": 12 // per_epoch, "batches_served": 12 % per_epoch}
    assert state["epoch"] >= 1 and state["batches_served"] > 0  # mid-epoch, past the first epoch
    fit("killed", "--ckpt_path", str(last))
    fit("uninterrupted")
    weights, ref = (load_checkpoint(runs_dir / exp / r / "checkpoints" / "last.ckpt") for r in ("killed", "uninterrupted"))
    assert weights["global_step"] == ref["global_step"] == 16
    for name, tensor in ref["state_dict"].items():
        assert torch.equal(weights["state_dict"][name], tensor), name
    if task == "vision":  # an epoch-level running accuracy: the resumed epoch keeps its first batches' tallies
        acc, ref_acc = (load_run(runs_dir / exp / r).series["train/acc"] for r in ("killed", "uninterrupted"))
        assert acc == ref_acc and [step for step, _ in acc] == [9, 15]


def test_vision_train_acc_resumes_from_a_checkpoint_written_at_a_mid_epoch_validation(runs_dir, subprocess_env):
    """With val_check_interval the last.ckpt of a mid-epoch validation is written while the trainer
    validates; its train/acc tallies must be in it too (killed after step 16, resumed from 14)."""
    args = [*VISION, "--checkpoint.last_every_n_train_steps=null", "--trainer.val_check_interval=4",
            "--trainer.limit_val_batches=1"]
    env = {**subprocess_env, "WANDB_MODE": "disabled"}
    repo = Path(__file__).resolve().parents[1]

    def fit(run_id: str, *extra: str, returncode: int = 0) -> None:
        proc = subprocess.run([sys.executable, "-m", "tx_suite", *args, "--run_id", run_id, *extra], env=env,
                              capture_output=True, text=True, timeout=300, cwd=repo)
        assert proc.returncode == returncode, proc.stderr[-2000:]

    kill = '--trainer.callbacks+={"class_path": "cli_fixtures.KillAtStep", "init_args": {"step": 16}}'
    fit("killed", kill, returncode=-signal.SIGKILL)
    last = runs_dir / "mnist_vit" / "killed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 14  # epoch 1's validation after its 4th batch
    fit("killed", "--ckpt_path", str(last))
    fit("uninterrupted")
    acc, ref_acc = (load_run(runs_dir / "mnist_vit" / r).series["train/acc"] for r in ("killed", "uninterrupted"))
    assert acc == ref_acc and [step for step, _ in acc] == [9, 15]


def test_resume_keeps_the_runs_seed(runs_dir, monkeypatch):
    """`--seed_everything=true` picks a random seed and records it; continuing the run with the same
    command (or the experiment's config, whose seed is 1234) must reuse the recorded seed, since
    the resumable loader orders every epoch by `seed + epoch`: another seed trains the rest of the
    run on other batches than the uninterrupted run."""
    resumable = ["--data.init_args.resumable=true"]
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert main([*COMMON, *resumable, "--seed_everything=true", "--trainer.max_epochs=1", "--run_id", "split"]) == 0
    seed = load_run(runs_dir / "tiny_mnist" / "split").info["seed"]
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # as in a new process
    assert main([*COMMON, *resumable, "--seed_everything=true", "--ckpt_path", "last"]) == 0
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert main([*COMMON, *resumable, f"--seed_everything={seed}", "--run_id", "whole"]) == 0
    info = load_run(runs_dir / "tiny_mnist" / "split").info
    assert info["resumes"][-1]["seed"] == seed, info["resumes"]
    metrics, weights = final_state(runs_dir / "tiny_mnist" / "split")
    ref_metrics, ref_weights = final_state(runs_dir / "tiny_mnist" / "whole")
    assert metrics == ref_metrics
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), name


def test_resumable_loader_seeds_its_order_from_seed_everything(monkeypatch):
    """Without `seed`, the order follows Lightning's PL_GLOBAL_SEED (set by seed_everything)."""
    data = torch.utils.data.TensorDataset(torch.arange(40))

    def order(**kw):
        return [b[0].tolist() for b in ResumableDataLoader(data, batch_size=40, shuffle=True, **kw)]

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    assert ResumableDataLoader(data, shuffle=True).sampler.seed == 5
    assert order() == order(seed=5) != order(seed=0)
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert order() == order(seed=0)


def test_resumable_sampler_skips_once_then_serves_whole_epochs():
    from tx_suite.utils.resumable_loader import ResumableSampler

    sampler = ResumableSampler(range(10), shuffle=True, seed=3)
    full = list(sampler)
    sampler.start_index = 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # start_index applies to the next iter() only


_QUIET_TRAINER = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      accelerator="cpu")


def _save_at(path, epoch: int, batch: int):
    """A callback that saves a checkpoint to ``path`` after batch ``batch`` of epoch ``epoch``
    (``batch=-1``: the epoch's last batch)."""
    from pytorch_lightning import Callback

    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
            last = trainer.num_training_batches - 1
            if trainer.current_epoch == epoch and batch_idx == (last if batch == -1 else batch):
                trainer.save_checkpoint(path)

    return SaveAt()


def _recorder_class(sampler: str, **loader_kw):
    """A LightningModule that records ``(epoch, sorted batch)`` of a 12-sample resumable loader
    (``sampler``: ``"resumable"``, batches of 3, or ``"token_budget"``), learning nothing."""
    from pytorch_lightning import LightningModule
    from torch.utils.data import TensorDataset

    from tx_suite.data.bucketing import TokenBudgetBatchSampler

    class Recorder(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, sorted(batch[0].tolist())))
            return self.layer(batch[0].float()[:, None]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def train_dataloader(self):
            data = TensorDataset(torch.arange(12))
            if sampler == "resumable":
                return ResumableDataLoader(data, batch_size=3, shuffle=True, seed=0, **loader_kw)
            return ResumableDataLoader(data, batch_sampler=TokenBudgetBatchSampler([1 + i % 3 for i in range(12)], 6,
                                                                                    shuffle=True, seed=0), **loader_kw)

    return Recorder


@pytest.mark.parametrize("sampler", ["resumable", "token_budget"])
def test_a_resume_with_worker_processes_continues_in_the_saved_epochs_order(tmp_path, sampler):
    """Lightning creates the resumed fit's first iterator before it calls set_epoch, and worker
    processes take their first indices from the sampler right then: mid-epoch, the skip was
    applied to epoch 0's order (3 of 12 samples trained twice in the resumed epoch, 3 never);
    from an epoch end, the next epoch replayed epoch 0's order."""
    from pytorch_lightning import Trainer

    Recorder = _recorder_class(sampler, num_workers=2, persistent_workers=True)
    kw = _QUIET_TRAINER
    whole, resumed = Recorder(), Recorder()
    Trainer(max_epochs=2, callbacks=[_save_at(tmp_path / "mid.ckpt", epoch=1, batch=1)], **kw).fit(whole)
    Trainer(max_epochs=2, **kw).fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    epoch1 = [b for e, b in whole.seen if e == 1]
    assert len(epoch1) >= 3 and [b for e, b in resumed.seen] == epoch1[2:]
    # from an epoch end, the next epoch is whole, in its own order (it replayed epoch 0's)
    first = Trainer(max_epochs=1, **kw)
    first.fit(Recorder())
    first.save_checkpoint(tmp_path / "end.ckpt")
    resumed = Recorder()
    Trainer(max_epochs=2, **kw).fit(resumed, ckpt_path=tmp_path / "end.ckpt")
    assert [b for e, b in resumed.seen] == epoch1 != [b for e, b in whole.seen if e == 0]


@pytest.mark.parametrize("sampler", ["resumable", "token_budget"])
def test_a_checkpoint_at_an_epochs_last_batch_resumes_into_a_whole_next_epoch(tmp_path, sampler):
    """Saved at the last batch (``every_n_train_steps`` dividing the epoch), the checkpoint's skip
    of a whole epoch was applied to the next one, which the restored loop had already begun: the
    resumed fit trained that epoch on no batches at all."""
    from pytorch_lightning import Trainer

    Recorder = _recorder_class(sampler)
    kw = _QUIET_TRAINER
    whole, resumed = Recorder(), Recorder()
    Trainer(max_epochs=3, callbacks=[_save_at(tmp_path / "last_batch.ckpt", epoch=0, batch=-1)], **kw).fit(whole)
    Trainer(max_epochs=3, **kw).fit(resumed, ckpt_path=tmp_path / "last_batch.ckpt")
    later = [b for e, b in whole.seen if e > 0]
    assert len(later) >= 6 and [b for e, b in resumed.seen] == later


def test_overfit_batches_rebuilds_the_resumable_loader_in_order(runs_dir, capsys):
    """Lightning's overfit_batches re-creates the training loader with a SequentialSampler; the
    loader refused any sampler, so `--trainer.overfit_batches` failed on every vision and
    generation config. Other samplers are still refused, with their name."""
    from torch.utils.data import RandomSampler, SequentialSampler

    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=0, sampler=SequentialSampler(data))
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(TypeError, match="got RandomSampler"):
        ResumableDataLoader(data, sampler=RandomSampler(data))
    assert main(["fit", "--config", str(TINY), "--trainer.overfit_batches=1", "--trainer.max_epochs=1",
                 "--trainer.logger=false", "--trainer.enable_progress_bar=false"]) == 0
