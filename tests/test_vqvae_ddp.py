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
