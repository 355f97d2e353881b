"""Train a translation experiment config and score it: BLEU / chrF on the test split with greedy
and beam search, for the last and the checkpoint-averaged weights, with wall times.

Uses the same YAML files as ``tx-suite fit`` (``_base_`` merged) but drives Lightning directly,
so it also runs where the CLI is not installed. Prints JSON and a short table.

    flock /tmp/tx-cpu.lock python benchmarks/translation_train.py \
        --config experiments/translation/multi30k_de_en.yaml --out runs/bench/multi30k_de_en
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

os.environ.setdefault("WANDB_MODE", "disabled")  # before Lightning is imported

from _common import (ROOT, AverageAtPatience, StopBeforeDeadline, TrimHeapEachEpoch, build, finite_floats, git_commit,  # noqa: E402
                     positive_float, positive_int, positive_ints, safe_fit_kwargs, segment_logger)

sys.path.insert(0, str(ROOT))

from tx_suite.utils.config import load_config  # noqa: E402  (_base_ merged as the CLI does)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max_epochs", type=positive_int, default=None)
    ap.add_argument("--train_limit", type=positive_int, default=None, help="first N training pairs only (smoke runs)")
    ap.add_argument("--test_beams", type=positive_ints, default=[1, 5], help="comma-separated beam sizes (1,5)")
    ap.add_argument("--tune_lenpen", type=finite_floats, default=None,
                    help="comma-separated length penalties: for each checkpoint and beam > 1, test with the one "
                         "that gives the best validation BLEU (tuned on valid, never on test, as fairseq does)")
    ap.add_argument("--skip_fit", action="store_true", help="only score the checkpoints already in --out")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from <out>/checkpoints/last.ckpt (same config)")
    ap.add_argument("--max_minutes", type=positive_float, default=None,
                    help="stop at the first epoch end after which one more epoch would pass this many minutes "
                         "of this process; the checkpoint is then at an epoch boundary, for a later --resume "
                         "(unlike trainer.max_time, whose clock a resumed run carries on)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads (1 is far faster when other processes share the cores)")
    ap.add_argument("--trim_heap", action="store_true",
                    help="glibc malloc_trim(0) after every training epoch, RSS before/after in "
                         "<out>/trim_heap.jsonl (a diagnostic of the RSS growth; Linux only)")
    ap.add_argument("--patience_average", type=positive_int, default=None, metavar="P",
                    help="also save (and score) the config's last-N average at the epoch where fairseq's "
                         "--patience P would stop (P validations without a lower val/loss), and train on; "
                         "validate every epoch for fairseq's count")
    args = ap.parse_args()

    import pytorch_lightning as pl
    import torch

    from tx_suite.tasks.callbacks.loader_state import RestoreLoaderState
    from tx_suite.tasks.callbacks.rng_state import RNGStateCallback
    from tx_suite.tasks.callbacks.run_checkpoint import RunCheckpoint
    from tx_suite.tasks.translation import TranslationTask

    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(Path(args.config))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.get("seed_everything", 1234))
    data_spec = copy.deepcopy(cfg["data"])
    if args.train_limit is not None:
        data_spec.setdefault("init_args", {})["train_limit"] = args.train_limit
    trainer_cfg = {k: v for k, v in (cfg.get("trainer") or {}).items() if k not in ("logger", "callbacks")}
    if args.max_epochs is not None:
        trainer_cfg["max_epochs"] = args.max_epochs
    callbacks = [build(c) for c in (cfg.get("trainer") or {}).get("callbacks", [])
                 if not c["class_path"].endswith(("TQDMProgressBar", "RichProgressBar"))]
    ck = cfg.get("checkpoint") or {}
    # RunCheckpoint, not ModelCheckpoint: since Lightning 2.6 a plain ModelCheckpoint(save_top_k=1)
    # rewrites last.ckpt only in epochs that improve the monitored metric.
    callbacks.append(RunCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=ck.get("monitor"),
                                   mode=ck.get("mode", "min"), save_last=True, save_top_k=1,
                                   enable_version_counter=False))

    class EpochPrinter(pl.Callback):
        def __init__(self):
            self.t0 = time.time()

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            m = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items()}
            print(json.dumps({"epoch": trainer.current_epoch, "elapsed_s": round(time.time() - self.t0), **m}),
                  flush=True)

    # As the CLI does: a resumed segment draws the shuffles and dropout masks of an uninterrupted run.
    callbacks.append(RNGStateCallback())
    callbacks.append(RestoreLoaderState())  # as tx-suite fit: a mid-epoch resume continues the epoch
    callbacks.append(EpochPrinter())
    if args.max_minutes is not None:
        callbacks.append(StopBeforeDeadline(args.max_minutes))
    if args.trim_heap:
        callbacks.append(TrimHeapEachEpoch(out / "trim_heap.jsonl"))
    if args.patience_average and trainer_cfg.get("check_val_every_n_epoch", 1) != 1:
        # fairseq validates every epoch, so its patience counts epochs; a sparser schedule would stretch it
        ap.error("--patience_average needs trainer.check_val_every_n_epoch: 1 (the validation loss every epoch, "
                 "as fairseq's --patience counts); thin out the BLEU with model.init_args.bleu_every_n_epochs")
    patience = AverageAtPatience(args.patience_average) if args.patience_average else None
    if patience is not None:
        callbacks.append(patience)
    result = {"config": args.config, "commit": git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    t_start = time.time()
    if not args.skip_fit:
        task = build(cfg["model"])
        resume = out / "checkpoints" / "last.ckpt" if args.resume else None
        if resume is not None and not resume.is_file():
            ap.error(f"--resume: no checkpoint at {resume}")
        # mmap: only the "epoch" entry is read, not the whole checkpoint (snapshots included) into the heap
        result["epochs_before_resume"] = (
            torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1 if resume else None)
        trainer = pl.Trainer(**trainer_cfg, default_root_dir=out, callbacks=callbacks,
                             logger=segment_logger(out, result["epochs_before_resume"]),
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(task, build(data_spec), ckpt_path=resume, **safe_fit_kwargs())
        result["fit_wall_s"] = round(time.time() - t_start, 1)
        if resource is not None:  # peak resident memory of this process (Linux: ru_maxrss in KiB)
            result["fit_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["epochs"] = trainer.current_epoch
        if patience is not None:
            result["patience"] = {"patience": patience.patience, "stop_epoch": patience.stop_epoch,
                                  "best_val_loss": patience.best}
    ckpts = {"last": out / "checkpoints" / "last.ckpt", "averaged": out / "checkpoints" / "averaged.ckpt",
             "averaged_patience": out / "checkpoints" / "averaged_patience.ckpt"}
    ckpts = {name: path for name, path in ckpts.items() if path.is_file()}
    if not ckpts:  # --skip_fit on an empty --out reported success with nothing scored
        ap.error(f"no checkpoint to score: neither {out}/checkpoints/last.ckpt nor averaged.ckpt exists")
    scores = []
    for name, path in ckpts.items():
        for beam in args.test_beams:
            overrides, val_bleu = {}, {}
            if args.tune_lenpen and beam > 1:
                for lp in args.tune_lenpen:
                    task = TranslationTask.load_from_checkpoint(path, **safe_fit_kwargs(), val_beam_size=beam,
                                                                length_penalty=lp, bleu_every_n_epochs=1)
                    tester = pl.Trainer(default_root_dir=out / f"val_{name}_beam{beam}", logger=False,
                                        enable_progress_bar=False, enable_model_summary=False)
                    val_bleu[lp] = round(tester.validate(task, build(data_spec), verbose=False)[0]["val/bleu"], 2)
                overrides["length_penalty"] = max(val_bleu, key=val_bleu.get)
            task = TranslationTask.load_from_checkpoint(path, **safe_fit_kwargs(), beam_size=beam, **overrides)
            t0 = time.time()
            tester = pl.Trainer(default_root_dir=out / f"test_{name}_beam{beam}", logger=False,
                                enable_progress_bar=False, enable_model_summary=False)
            m = tester.test(task, build(data_spec), verbose=False)[0]
            scores.append({"weights": name, "beam": beam, "wall_s": round(time.time() - t0, 1),
                           "length_penalty": task.hparams.length_penalty,
                           **({"val_bleu_by_length_penalty": val_bleu} if val_bleu else {}),
                           **{k.removeprefix("test/"): round(v, 2) for k, v in m.items()}})
            # after every scored pass: a run stopped during a later one (a GPU session's time
            # limit) keeps what was scored; the final write below adds the totals
            (out / "result.json").write_text(json.dumps({**result, "test": scores, "scoring_complete": False}, indent=1))
    result["test"] = scores
    result["scoring_complete"] = True
    result["total_wall_s"] = round(time.time() - t_start, 1)
    print(json.dumps(result, indent=1))
    print(f"\n{'weights':<17} {'beam':>4} {'lenpen':>6} {'BLEU':>6} {'BLEU lc':>7} {'chrF':>6} {'sent/s':>7}")
    for s in scores:
        print(f"{s['weights']:<17} {s['beam']:>4} {s['length_penalty']:>6} {s['bleu']:>6.2f} {s['bleu_lc']:>7.2f} "
              f"{s['chrf']:>6.2f} {s['sent_per_s']:>7.1f}")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    if "epochs" in result:  # one file per segment of a resumed run too
        (out / f"result_epoch_{result['epochs']}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
