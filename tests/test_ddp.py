"""DDP on CPU (2 processes, gloo) through `tx-suite fit`, started by Lightning's launcher and by
torchrun (scripts/torchrun_fit.sh): same weights as one process with the same global batch, and
one run directory written by rank 0 only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tx_suite.cli.main import main
from tx_suite.utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "configs" / "tiny_mnist.yaml")
# One epoch = 8 optimizer steps of a global batch of 64 digits. No dropout, so the only randomness
# is the data order: ResumableDataLoader draws one seed+epoch permutation and, under DDP, rank r
# takes its positions r, r+2, ...; global batch k of 2 ranks x 32 is then exactly batch k of one
# process x 64, and DDP's gradient all-reduce (mean) equals the mean over the 64.
COMMON = ["fit", "--config", TINY, "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
          "--model.init_args.dropout=0", "--data.init_args.resumable=true"]
TWO_RANKS = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--data.init_args.batch_size=32"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8
    return ckpt["state_dict"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Weights after one epoch in one process, batch 64; and a control run with another data order."""
    root = tmp_path_factory.mktemp("single")
    assert main([*COMMON, "--runs_dir", str(root), "--run_id", "r1"]) == 0
    assert main([*COMMON, "--runs_dir", str(root), "--run_id", "other", "--data.init_args.resumable=false"]) == 0
    ref = weights(root / "tiny_mnist" / "r1")
    assert max_diff(weights(root / "tiny_mnist" / "other"), ref) > 1e-3  # the data order alone moves weights this much
    return ref


def check_rank_zero_run(runs_dir: Path, experiment: str, run_id: str) -> Path:
    """Exactly one run directory, complete and finished (rank 1 wrote nothing of its own)."""
    assert [p.name for p in (runs_dir / experiment).iterdir()] == [run_id]
    run = runs_dir / experiment / run_id
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and "resumes" not in info
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    return run


def test_lightning_ddp_launcher_matches_one_process(single, runs_dir, subprocess_env):
    env = {**subprocess_env, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}  # W&B offline: rank 0 only
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", *COMMON, *TWO_RANKS, "--trainer.devices=2", "--experiment", "ddp",
         "--run_id", "r2"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr  # two processes really ran
    run = check_rank_zero_run(runs_dir, "ddp", "r2")
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert max_diff(weights(run), single) < 1e-6  # float summation order only (measured 2e-8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_script_matches_one_process(single, runs_dir, subprocess_env):
    env = {**subprocess_env, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2", "RUN_ID": "tr1",
           "MASTER_PORT": str(free_port()), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "torchrun_fit.sh"), *COMMON[1:], *TWO_RANKS],
                          env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr
    run = check_rank_zero_run(runs_dir, "tiny_mnist", "tr1")
    assert max_diff(weights(run), single) < 1e-6


def test_torchrun_ranks_share_a_random_seed(runs_dir, subprocess_env, tmp_path):
    """`seed_everything: true` under torchrun: both ranks use one seed (the data order and shards
    come from it), so the run equals one process trained with the seed that rank 0 recorded."""
    env = {**subprocess_env, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2", "RUN_ID": "tr-seed",
           "MASTER_PORT": str(free_port()), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "torchrun_fit.sh"), *COMMON[1:], *TWO_RANKS,
                           "--seed_everything=true"], env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_rank_zero_run(runs_dir, "tiny_mnist", "tr-seed")
    seed = json.loads((run / "run_info.json").read_text())["seed"]
    assert seed != 1234  # not the config's default
    assert main([*COMMON, "--runs_dir", str(tmp_path), "--run_id", "one", f"--seed_everything={seed}"]) == 0
    assert max_diff(weights(run), weights(tmp_path / "tiny_mnist" / "one")) < 1e-6


def test_vision_config_with_ema_trains_and_predicts_under_ddp(runs_dir, subprocess_env):
    """The ViT task keeps an EMA copy of the model (every vision config): DDP must not expect
    gradients for it (it failed with "parameters that were not used in producing the loss"), and
    the checkpoint keeps the EMA weights beside the trained ones. `predict` under DDP writes every
    rank's predictions (it wrote rank 0's half)."""
    env = {**subprocess_env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    small = ["--model.init_args.d_model=32", "--model.init_args.n_layers=1", "--model.init_args.n_heads=2",
             "--model.init_args.d_ff=64", "--model.init_args.compile=false", "--data.init_args.num_workers=0",
             "--data.init_args.batch_size=16", "--trainer.max_steps=4", "--trainer.limit_val_batches=1",
             "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", "fit", "--config", "experiments/vision/mnist_vit.yaml", *small,
         "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2", "--run_id", "v1"],
        env=env, capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr
    ckpt = load_checkpoint(runs_dir / "mnist_vit" / "v1" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    state = ckpt["state_dict"]
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    live = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert ema.keys() == live.keys() and not torch.equal(ema["head.weight"], live["head.weight"])

    # predict under DDP: each rank predicts every 2nd test image (DistributedSampler); rank 0
    # writes them all, as one process predicting the same images (4 eval batches) would.
    ckpt_args = ["--ckpt_path", str(runs_dir / "mnist_vit" / "v1" / "checkpoints" / "last.ckpt")]
    csvs = {}
    for run_id, devices in (("p2", ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.limit_predict_batches=2"]),
                            ("p1", ["--trainer.devices=1", "--trainer.limit_predict_batches=4"])):
        proc = subprocess.run(
            [sys.executable, "-m", "tx_suite", "predict", "--config", "experiments/vision/mnist_vit.yaml", *small,
             "--trainer.accelerator=cpu", *devices, *ckpt_args, "--run_id", run_id],
            env=env, capture_output=True, text=True, timeout=180, cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        csvs[run_id] = (runs_dir / "mnist_vit" / run_id / "predictions.csv").read_text().splitlines()
    n = len(csvs["p1"]) - 1
    assert n >= 64 and [r.split(",")[0] for r in csvs["p2"][1:]] == [str(i) for i in range(n)]
    for a, b in zip(csvs["p2"], csvs["p1"]):  # same labels; probabilities to float rounding
        assert a.split(",")[:2] == b.split(",")[:2]
        if a[0].isdigit():
            assert abs(float(a.split(",")[2]) - float(b.split(",")[2])) < 1e-4


def test_translation_config_trains_under_ddp(runs_dir, subprocess_env, tmp_path):
    """Multi30k's length-bucketed batch sampler shards itself over the ranks; Lightning could not
    inject its DistributedSampler into it ("can't inject a (distributed) sampler"), so tx-suite
    turns the injection off for data modules with ``shards_batches``."""
    env = {**subprocess_env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    small = ["--data.init_args.train_limit=2000", "--data.init_args.vocab_size=1000",
             "--model.init_args.vocab_size=1000", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
             "--trainer.max_steps=3", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", "fit", "--config", "experiments/translation/multi30k_de_en_quickstart.yaml",
         *small, "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2", "--run_id", "t1"],
        env=env, capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr
    ckpt = load_checkpoint(runs_dir / "multi30k_de_en_quickstart" / "t1" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3


def test_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(runs_dir, subprocess_env):
    """A NaN loss on rank 1 alone: every rank must stop at that step with NonFiniteLossError (the
    ranks agree on the check), instead of rank 0 going on into the gradient all-reduce alone."""
    env = {**subprocess_env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    nan_step = 8 + 3  # epoch 1, batch 3
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", *COMMON, *TWO_RANKS, "--trainer.devices=2", "--trainer.max_epochs=2",
         f"--model.init_args.nan_at_step={nan_step}", "--model.init_args.nan_rank=1", "--run_id", "nan"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    run = runs_dir / "tiny_mnist" / "nan"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed"
    assert info["error"].startswith("NonFiniteLossError: ") and f"global step {nan_step}" in info["error"], info["error"]
    assert "(on another rank)" in info["error"]  # rank 0's own loss was finite
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8  # the epoch-0 checkpoint, not the NaN state
