"""Translation evaluation under data parallelism (2 CPU processes, gloo): each rank scores a shard
of the validation/test batches, and the gathered corpus-level scores equal one process's."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from tx_suite.data.multi30k_datamodule import Multi30kDataModule

REPO = Path(__file__).resolve().parents[1]


def small_data(cache_dir: Path) -> Multi30kDataModule:
    return Multi30kDataModule(vocab_size=800, train_limit=500, cache_dir=str(cache_dir), eval_max_tokens=2048)


def worker(rank: int, init_file: str, cache_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dm = small_data(Path(cache_dir))
        dm.setup("validate")
        batches = [batch["index"].tolist() for batch in dm.val_dataloader()]
        Path(f"{out}.{rank}").write_text(repr(batches))
    finally:
        dist.destroy_process_group()


def test_eval_batches_are_sharded_over_the_ranks(tmp_path):
    dm = small_data(tmp_path / "cache")
    dm.setup("validate")  # trains and caches the BPE model once, before the ranks read it
    whole = [batch["index"].tolist() for batch in dm.val_dataloader()]
    n = len(dm.dataset("val"))
    assert sorted(i for b in whole for i in b) == list(range(n))
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "cache"), str(tmp_path / "batches")), nprocs=2)
    ranks = [eval((tmp_path / f"batches.{r}").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == (len(whole) + 1) // 2  # equal step counts (DDP needs them)
    assert ranks[0] + ranks[1] != whole and ranks[0] == whole[0::2]  # rank r: batches r, r + 2, ...
    seen = {i for shard in ranks for b in shard for i in b}
    assert seen == set(range(n))  # together the whole split, each rank about half of it


def test_test_scores_under_ddp_equal_one_process(runs_dir, subprocess_env, tmp_path):
    env = {**subprocess_env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    tiny = ["--model.init_args.vocab_size=800", "--model.init_args.d_model=32", "--model.init_args.n_heads=2",
            "--model.init_args.d_ff=64", "--model.init_args.n_encoder_layers=1", "--model.init_args.n_decoder_layers=1",
            "--model.init_args.beam_size=2"]
    data = ["--data.init_args.vocab_size=800", "--data.init_args.train_limit=500",
            f"--data.init_args.cache_dir={tmp_path}", "--data.init_args.eval_max_tokens=2048"]
    config = ["--config", "experiments/translation/multi30k_de_en_quickstart.yaml"]

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "tx_suite", *args, "--trainer.enable_progress_bar=false"],
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    run("fit", *config, *tiny, *data, "--trainer.max_steps=30", "--trainer.limit_val_batches=0", "--run_id", "f")
    ckpt = str(runs_dir / "multi30k_de_en_quickstart" / "f" / "checkpoints" / "last.ckpt")
    test = ["test", *config, *data, "--ckpt_path", ckpt]  # the whole split (a batch limit is per rank)
    run(*test, "--run_id", "one")
    err = run(*test, "--run_id", "two", "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2")
    assert "GLOBAL_RANK: 1" in err  # two processes ran, each on half the batches

    def logged(run_id: str) -> dict[str, float]:
        rows = list(csv.DictReader((runs_dir / "multi30k_de_en_quickstart" / run_id / "metrics.csv").open()))
        return {k: float(v) for row in rows for k, v in row.items() if k.startswith("test/") and v}

    one, two = logged("one"), logged("two")
    assert one.keys() == two.keys() >= {"test/bleu", "test/chrf", "test/loss", "test/nll"}
    for k in one.keys() - {"test/sent_per_s"}:
        assert abs(one[k] - two[k]) <= 1e-5 * max(1.0, abs(one[k])), (k, one[k], two[k])
    hyps = [(runs_dir / "multi30k_de_en_quickstart" / r / "test_hypotheses.txt").read_text() for r in ("one", "two")]
    assert hyps[0] == hyps[1] and hyps[0].count("\n") == 1000  # test_2016_flickr
