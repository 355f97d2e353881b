"""DDP on CPU (2 processes, gloo) through `tx-suite fit`: same weights as one process with the same
global batch, and one run directory written by rank 0 only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tx_suite.cli.main import main
from tx_suite.utils.checkpoint import load_checkpoint

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")
# One epoch = 8 optimizer steps of a global batch of 64 digits. No dropout, so the only randomness
# is the data order: ResumableDataLoader draws one seed+epoch permutation and, under DDP, rank r
# takes its positions r, r+2, ...; global batch k of 2 ranks x 32 is then exactly batch k of one
# process x 64, and DDP's gradient all-reduce (mean) equals the mean over the 64.
COMMON = ["fit", "--config", TINY, "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
          "--model.init_args.dropout=0", "--data.init_args.resumable=true"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8
    return ckpt["state_dict"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_ddp_two_cpu_processes_match_one_process(runs_dir, subprocess_env):
    env = {**subprocess_env, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}  # W&B offline: rank 0 only
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", *COMMON, "--experiment", "ddp", "--run_id", "r2",
         "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.init_args.batch_size=32"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr  # two processes really ran

    # Rank 0 alone wrote the run: one directory, a finished record, one offline W&B run.
    assert [p.name for p in (runs_dir / "ddp").iterdir()] == ["r2"]
    run = runs_dir / "ddp" / "r2"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and "resumes" not in info
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()

    assert main([*COMMON, "--experiment", "single", "--run_id", "r1"]) == 0
    assert main([*COMMON, "--experiment", "single", "--run_id", "other_order", "--data.init_args.resumable=false"]) == 0
    ddp, single = weights(run), weights(runs_dir / "single" / "r1")
    other_order = weights(runs_dir / "single" / "other_order")
    assert max_diff(ddp, single) < 1e-6  # float summation order only (measured 2e-8)
    assert max_diff(other_order, single) > 1e-3  # control: the data order alone moves the weights this much
