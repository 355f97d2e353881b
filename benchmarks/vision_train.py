"""Train a vision experiment config to its end and time it: accuracy against CPU wall time.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/vision_train.py \\
        --config experiments/vision/mnist_vit.yaml --out /tmp/vision-mnist

Reads the same YAML files as ``tx-suite fit`` (``_base_`` merged; model, data and
trainer.callbacks instantiated from ``class_path``/``init_args``), trains with a plain
``pytorch_lightning.Trainer`` (CSV log in ``--out``), and after every epoch records the wall
time since the start of ``fit`` with val and test accuracy of the inference (EMA) weights.
The test accuracy per epoch is a learning curve only: nothing is selected by it, the reported
result is the model at the end of training. Prints JSON (also ``<out>/result.json``) and a table.

Long runs can be split over several processes: ``--max-minutes N`` stops at an epoch boundary
(``<out>/checkpoints/last.ckpt`` is written every epoch), and the same command with ``--resume``
continues it; the curve (``<out>/curve.jsonl``) and its training wall time carry on. A run that
stopped early says so (``"finished": false``) and its test accuracy is an interim one.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from _common import (ROOT, StopBeforeDeadline, build, git_commit, machine, positive_float, positive_int, safe_fit_kwargs,
                     segment_logger)

sys.path.insert(0, str(ROOT))

from tx_suite.utils.config import load_config  # noqa: E402  (_base_ merged as the CLI does)


def read_curve(path: Path, up_to_epoch: int) -> list[dict]:
    """The curve rows a resumed run keeps: those of the epochs its checkpoint has trained."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--max-epochs", type=positive_int, help="override trainer.max_epochs")
    p.add_argument("--max-minutes", type=positive_float,
                   help="stop at the first epoch end after which one more epoch would pass this many minutes of "
                        "this process (an epoch boundary, so --resume can continue the run later)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoints/last.ckpt (same --config and --max-epochs: they set the "
                        "cosine schedule); the curve and wall time carry on")
    p.add_argument("--seed", type=int, help="override the config's seed_everything (e.g. members of an ensemble, "
                                           "benchmarks/vision_ensemble.py); the train/val split keeps data.seed")
    p.add_argument("--limit-train", type=positive_int, help="train on the first N images (smoke runs)")
    p.add_argument("--no-test-curve", action="store_true", help="test only at the end")
    args = p.parse_args(argv)

    import pytorch_lightning as pl
    import torch

    from tx_suite.tasks.callbacks.loader_state import RestoreLoaderState
    from tx_suite.tasks.callbacks.rng_state import RNGStateCallback
    from tx_suite.tasks.callbacks.run_checkpoint import RunCheckpoint

    run_args = {"config": str(args.config), "max_epochs": args.max_epochs, "limit_train": args.limit_train}
    if args.seed is not None:
        run_args["seed"] = args.seed
    args_file, curve_file = args.out / "run_args.json", args.out / "curve.jsonl"
    resume = args.out / "checkpoints" / "last.ckpt" if args.resume else None
    if resume is not None:
        if not resume.is_file():
            p.error(f"--resume: no checkpoint at {resume}")
        saved = json.loads(args_file.read_text()) if args_file.is_file() else run_args
        if saved != run_args:
            p.error(f"--resume: this run was started with {saved}, not {run_args}")
    cfg = load_config(args.config)
    seed = args.seed if args.seed is not None else cfg.get("seed_everything", 1234)
    pl.seed_everything(seed, workers=True)
    trainer_cfg = dict(cfg.get("trainer", {}))
    callbacks = [build(c) for c in trainer_cfg.pop("callbacks", []) or []
                 if not c["class_path"].endswith(("TQDMProgressBar", "RichProgressBar"))]
    trainer_cfg.pop("logger", None)
    if args.max_epochs is not None:
        trainer_cfg["max_epochs"] = args.max_epochs
    data_spec = copy.deepcopy(cfg["data"])
    if args.limit_train is not None:
        data_spec.setdefault("init_args", {})["limit_train"] = args.limit_train
    datamodule = build(data_spec)
    model = build(cfg["model"])
    datamodule.prepare_data()
    datamodule.setup("test")
    test_loader = datamodule.test_dataloader()
    epochs_before = (torch.load(resume, map_location="cpu", weights_only=True)["epoch"] + 1) if resume else 0
    curve: list[dict] = read_curve(curve_file, epochs_before)
    wall_before = curve[-1]["wall_s"] if curve else 0.0

    class Curve(pl.Callback):
        """Wall time since fit start, val and test accuracy after every training epoch."""

        def on_fit_start(self, trainer, module):
            self.start = time.perf_counter()
            self.eval_s = 0.0

        def on_validation_epoch_end(self, trainer, module):
            if not trainer.sanity_checking:
                self.record(trainer, module)

        def on_train_epoch_end(self, trainer, module):
            if sum(trainer.num_val_batches) == 0:  # data.val_size 0: trained on every training image
                self.record(trainer, module)

        def record(self, trainer, module):
            t0 = time.perf_counter()
            val_acc = trainer.callback_metrics.get("val/acc")
            row = {"epoch": trainer.current_epoch + 1,
                   "wall_s": round(wall_before + t0 - self.start - self.eval_s, 1),
                   "val_acc": None if val_acc is None else float(val_acc)}
            if not args.no_test_curve:
                module.eval()
                correct = total = 0
                # the module's device type: "cpu" hard-coded left a GPU run's curve in fp32
                with torch.no_grad(), torch.autocast(module.device.type, dtype=torch.bfloat16,
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
            with curve_file.open("a") as f:
                f.write(json.dumps(row) + "\n")

    args.out.mkdir(parents=True, exist_ok=True)
    args_file.write_text(json.dumps(run_args))
    curve_file.write_text("".join(json.dumps(r) + "\n" for r in curve))  # drops rows past the checkpoint
    ck = cfg.get("checkpoint") or {}
    # RunCheckpoint keeps last.ckpt current every epoch (a plain ModelCheckpoint would not, see its docs).
    callbacks.append(RunCheckpoint(dirpath=args.out / "checkpoints", filename="best", monitor=ck.get("monitor"),
                                   mode=ck.get("mode", "min"), save_last=True, save_top_k=1,
                                   enable_version_counter=False))
    # As the CLI does: a resumed segment draws the shuffles and dropout masks of an uninterrupted run.
    callbacks.append(RNGStateCallback())
    callbacks.append(RestoreLoaderState())  # as tx-suite fit: a mid-epoch resume continues the epoch
    if args.max_minutes is not None:
        callbacks.append(StopBeforeDeadline(args.max_minutes))
    trainer = pl.Trainer(logger=segment_logger(args.out, epochs_before), default_root_dir=str(args.out),
                         callbacks=[*callbacks, Curve()], enable_progress_bar=False, **trainer_cfg)
    # The code that trains is the code at the start: commits made while the run goes on do not count.
    commit, started = git_commit(), time.strftime("%Y-%m-%d %H:%M")
    start = time.perf_counter()
    trainer.fit(model, datamodule, ckpt_path=resume, **safe_fit_kwargs())
    fit_s = time.perf_counter() - start
    test = trainer.test(model, datamodule, verbose=False)[0]
    result = {
        "config": str(args.config),
        "commit": commit,
        "started": started,
        "seed": seed,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "epochs": trainer.current_epoch,
        "max_epochs": trainer.max_epochs,
        "finished": trainer.current_epoch >= trainer.max_epochs,
        "epochs_before_resume": epochs_before or None,
        "fit_wall_s": round(fit_s, 1),
        "train_wall_s": curve[-1]["wall_s"] if curve else None,
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "best_val_acc": max((r["val_acc"] for r in curve if r["val_acc"] is not None), default=None),
        "params": sum(p.numel() for p in model.model.parameters()),
        "curve": curve,
    }
    if (commit_at_end := git_commit()) != commit:
        result["commit_at_end"] = commit_at_end
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    print(f"\n| epoch | train wall (min) | val acc | test acc |\n|---|---|---|---|")
    for r in curve:
        print(f"| {r['epoch']} | {r['wall_s'] / 60:.1f} | {float('nan') if r['val_acc'] is None else r['val_acc']:.4f} | {r.get('test_acc', float('nan')):.4f} |")
    print(f"\n{'final' if result['finished'] else 'interim (resume to finish)'} test accuracy "
          f"{result['test_acc']:.4f} after {result['epochs']} of {result['max_epochs']} epochs, "
          f"fit wall time of this process {fit_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
