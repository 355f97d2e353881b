"""Train a vision experiment config to its end and time it: accuracy against CPU wall time.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/vision_train.py \\
        --config experiments/vision/mnist_vit.yaml --out /tmp/vision-mnist

Reads the same YAML files as ``tx-suite fit`` (``_base_`` merged; model, data and
trainer.callbacks instantiated from ``class_path``/``init_args``), trains with a plain
``pytorch_lightning.Trainer`` (CSV log in ``--out``), and after every epoch records the wall
time since the start of ``fit`` with val and test accuracy of the inference (EMA) weights.
The test accuracy per epoch is a learning curve only: nothing is selected by it, the reported
result is the model at the end of training. Prints JSON (also ``<out>/result.json``) and a table.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tx_suite.utils.config import load_config  # noqa: E402  (_base_ merged as the CLI does)


def instantiate(spec: dict):
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--max-epochs", type=int, help="override trainer.max_epochs")
    p.add_argument("--max-minutes", type=float, help="hard stop after this much training (trainer.max_time)")
    p.add_argument("--limit-train", type=int, help="train on the first N images (smoke runs)")
    p.add_argument("--no-test-curve", action="store_true", help="test only at the end")
    args = p.parse_args(argv)

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger

    cfg = load_config(args.config)
    pl.seed_everything(cfg.get("seed_everything", 1234), workers=True)
    trainer_cfg = dict(cfg.get("trainer", {}))
    callbacks = [instantiate(c) for c in trainer_cfg.pop("callbacks", []) or []
                 if not c["class_path"].endswith(("TQDMProgressBar", "RichProgressBar"))]
    trainer_cfg.pop("logger", None)
    if args.max_epochs:
        trainer_cfg["max_epochs"] = args.max_epochs
    if args.max_minutes:
        trainer_cfg["max_time"] = {"minutes": args.max_minutes}
    data_spec = copy.deepcopy(cfg["data"])
    if args.limit_train:
        data_spec.setdefault("init_args", {})["limit_train"] = args.limit_train
    datamodule = instantiate(data_spec)
    model = instantiate(cfg["model"])
    datamodule.prepare_data()
    datamodule.setup("test")
    test_loader = datamodule.test_dataloader()
    curve: list[dict] = []

    class Curve(pl.Callback):
        """Wall time since fit start, val and test accuracy after every training epoch."""

        def on_fit_start(self, trainer, module):
            self.start = time.perf_counter()
            self.eval_s = 0.0

        def on_validation_epoch_end(self, trainer, module):
            if trainer.sanity_checking:
                return
            t0 = time.perf_counter()
            row = {"epoch": trainer.current_epoch + 1,
                   "wall_s": round(t0 - self.start - self.eval_s, 1),
                   "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}
            if not args.no_test_curve:
                module.eval()
                correct = total = 0
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=str(trainer.precision).startswith("bf16")):
                    for x, y in test_loader:
                        pred = module(x.to(module.device)).argmax(-1).cpu()
                        correct += int((pred == y).sum())
                        total += len(y)
                module.train()
                row["test_acc"] = correct / total
                self.eval_s += time.perf_counter() - t0  # the curve's own test pass is not training time
            curve.append(row)
            print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(logger=CSVLogger(str(args.out), name="", version=""), default_root_dir=str(args.out),
                         callbacks=[*callbacks, Curve()], enable_progress_bar=False, enable_checkpointing=False,
                         **trainer_cfg)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    fit_s = time.perf_counter() - start
    trainer.save_checkpoint(args.out / "last.ckpt")
    test = trainer.test(model, datamodule, verbose=False)[0]
    result = {
        "config": str(args.config),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "epochs": trainer.current_epoch,
        "fit_wall_s": round(fit_s, 1),
        "train_wall_s": curve[-1]["wall_s"] if curve else None,
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "best_val_acc": max((r["val_acc"] for r in curve), default=None),
        "params": sum(p.numel() for p in model.model.parameters()),
        "curve": curve,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    print(f"\n| epoch | train wall (min) | val acc | test acc |\n|---|---|---|---|")
    for r in curve:
        print(f"| {r['epoch']} | {r['wall_s'] / 60:.1f} | {r['val_acc']:.4f} | {r.get('test_acc', float('nan')):.4f} |")
    print(f"\nfinal test accuracy {result['test_acc']:.4f} after {result['epochs']} epochs, "
          f"fit wall time {fit_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
