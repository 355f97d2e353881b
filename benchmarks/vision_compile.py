"""``ImageClassification(compile=True)`` against eager, in Lightning's training loop on real MNIST.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/vision_compile.py

Builds the task and data of an experiment config (default ``experiments/vision/mnist_vit.yaml``:
bf16 autocast, math attention kernel, EMA, RandomAffine) twice, once with ``compile: false`` and
once with ``compile: true``, and runs ``Trainer.fit`` for ``--steps`` training steps each, in
alternating rounds (no validation, no logger, no checkpoints), so host load hits both alike. A
callback times every step; the first round's first ``--skip`` steps of each variant (where
``torch.compile`` builds its graph) are left out and reported as warm-up. Step time is the median
over the remaining steps of all rounds. Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, build, git_commit, machine, nonnegative_int, positive_int

sys.path.insert(0, str(ROOT))

from tx_suite.utils.config import load_config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "experiments/vision/mnist_vit.yaml")
    p.add_argument("--steps", type=positive_int, default=60, help="training steps per variant and round")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--skip", type=nonnegative_int, default=5, help="warm-up steps left out of the first round")
    p.add_argument("--precision", help="override trainer.precision (e.g. 32-true)")
    args = p.parse_args(argv)
    if args.steps <= args.skip:
        p.error(f"--steps ({args.steps}) must exceed --skip ({args.skip}): the first round keeps steps after the warm-up")

    import pytorch_lightning as pl
    import torch

    cfg = load_config(args.config)
    pl.seed_everything(0, verbose=False)
    precision = args.precision or (cfg.get("trainer") or {}).get("precision", "32-true")
    datamodule = build(cfg["data"])
    tasks = {name: build(cfg["model"], compile=name == "compiled") for name in ("eager", "compiled")}

    class StepTimer(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        @staticmethod
        def _sync(module):  # CUDA runs asynchronously: read the clock after the step's kernels
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._sync(module)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._sync(module)
            self.times.append(time.perf_counter() - self.t0)

    steps = {name: [] for name in tasks}
    warmup = {}
    for r in range(args.rounds):
        for name, task in tasks.items():
            timer = StepTimer()
            trainer = pl.Trainer(max_steps=args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, precision=precision,
                                 callbacks=[timer], num_sanity_val_steps=0)
            trainer.fit(task, datamodule)
            times = timer.times
            if r == 0:
                warmup[name] = round(sum(times[: args.skip]), 1)
                times = times[args.skip:]
            steps[name] += times
            print(json.dumps({"round": r, "variant": name, "median_s_per_step": round(statistics.median(times), 4)}),
                  flush=True)

    batch_size = cfg["data"]["init_args"]["batch_size"]
    med = {name: statistics.median(ts) for name, ts in steps.items()}
    result = {"config": str(args.config), "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "precision": precision, "batch_size": batch_size,
              "steps_timed": {n: len(ts) for n, ts in steps.items()},
              "s_per_step": {n: round(m, 4) for n, m in med.items()},
              "img_per_s": {n: round(batch_size / m, 1) for n, m in med.items()},
              "warmup_s_first_steps": warmup, "speedup": round(med["eager"] / med["compiled"], 3)}
    print(json.dumps(result))
    print("\n| variant | s/step (median) | img/s | first steps (s) |\n|---|---|---|---|")
    for n in tasks:
        print(f"| {n} | {med[n]:.4f} | {batch_size / med[n]:.0f} | {warmup[n]} |")
    print(f"\ncompiled / eager: {result['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
