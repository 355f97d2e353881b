"""VQ-VAE codebook under data parallelism (2 CPU processes, gloo): the EMA codebook update of two
ranks on two half batches equals one process on the whole batch, once the task has enabled sync."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tx_suite.data.captioned_mnist import CaptionedMNIST
from tx_suite.tasks.vqvae import VQVAETask

SMALL = dict(hidden=32, res_channels=16, n_res_blocks=1, codebook_size=64, codebook_dim=16,
             decay=0.5, log_images=0)


def build(**kw) -> VQVAETask:
    torch.manual_seed(0)  # same weights on every rank, as DDP's initial broadcast would make them
    return VQVAETask(**SMALL, **kw)


def codebook_after_two_steps(task: VQVAETask, images: torch.Tensor) -> torch.Tensor:
    task.train()
    for half in images.chunk(2):
        task(half)  # training-mode forward: the EMA codebook update
    return task.model.quantizer.codebook.detach().clone()


def worker(rank: int, init_file: str, images: torch.Tensor, kw: dict, sync: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        task = build(**kw)
        if sync:
            task.configure_model()
            assert task.model.codebook_synced
        shard = torch.cat([c[rank::2] for c in images.chunk(2)])  # rank r: every 2nd image of each step
        torch.save(codebook_after_two_steps(task, shard), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def two_ranks(tmp_path, images: torch.Tensor, kw: dict, sync: bool) -> list[torch.Tensor]:
    out = str(tmp_path / f"codebook_{sync}")
    mp.spawn(worker, args=(str(tmp_path / f"init_{sync}"), images, kw, sync, out), nprocs=2)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    ds = CaptionedMNIST(split="train", size=64, seed=0)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_single_process_leaves_sync_off(scenes):
    task = build()
    task.configure_model()
    assert not task.model.codebook_synced


def test_synced_codebook_update_equals_one_process_on_the_whole_batch(tmp_path, scenes):
    # No k-means or dead-code draws: the EMA update alone, which is deterministic.
    kw = dict(kmeans_init=False, threshold_ema_dead_code=0.0)
    whole = codebook_after_two_steps(build(**kw), scenes)
    synced = two_ranks(tmp_path, scenes, kw, sync=True)
    for codebook in synced:
        assert (codebook - whole).abs().max() < 1e-6  # measured 2e-8 (summation order)
    unsynced = two_ranks(tmp_path, scenes, kw, sync=False)
    # The bug it fixes: each rank averages only its own shard (measured 7e-5 and 1e-4 off).
    assert min((c - whole).abs().max() for c in unsynced) > 2e-5


def test_synced_kmeans_init_gives_every_rank_the_same_codebook(tmp_path, scenes):
    synced = two_ranks(tmp_path, scenes, {}, sync=True)
    assert torch.equal(synced[0], synced[1])
    unsynced = two_ranks(tmp_path, scenes, {}, sync=False)
    assert not torch.allclose(unsynced[0], unsynced[1])


def test_validate_under_ddp_reports_the_whole_val_set(runs_dir, subprocess_env):
    """Two ranks each validate half the images: the logged loss and codebook usage are those of
    the whole set (one process), not rank 0's half."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**subprocess_env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    small = ["--config", "experiments/generation/vqvae_mnist.yaml", "--model.init_args.hidden=16",
             "--model.init_args.res_channels=8", "--model.init_args.n_res_blocks=1",
             "--model.init_args.codebook_size=64", "--model.init_args.codebook_dim=8",
             "--model.init_args.log_images=0", "--data.init_args.train_size=64",
             "--data.init_args.val_size=64", "--data.init_args.batch_size=16",
             "--trainer.enable_progress_bar=false"]

    def run(subcommand: str, *args: str) -> str:
        # Overrides after the --config they override (a later --config would win over them).
        proc = subprocess.run([sys.executable, "-m", "tx_suite", subcommand, *small, *args], env=env,
                              capture_output=True, text=True, timeout=180, cwd=repo)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    def logged(run_id: str) -> dict[str, float]:
        rows = list(csv.DictReader((runs_dir / "vqvae_mnist" / run_id / "metrics.csv").open()))
        return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}

    run("fit", "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--run_id", "f")
    ckpt = str(runs_dir / "vqvae_mnist" / "f" / "checkpoints" / "last.ckpt")
    run("validate", "--ckpt_path", ckpt, "--run_id", "one")
    err = run("validate", "--ckpt_path", ckpt, "--run_id", "two", "--trainer.accelerator=cpu",
              "--trainer.strategy=ddp", "--trainer.devices=2")
    assert "GLOBAL_RANK: 1" in err  # two processes really ran
    one, two = logged("one"), logged("two")
    assert one.keys() == two.keys() >= {"val/recon_loss", "val/codebook_usage", "val/psnr"}
    for k in one:
        assert abs(one[k] - two[k]) <= 1e-5 * max(1.0, abs(one[k])), (k, one[k], two[k])
