"""benchmarks/_common.py helpers that keep the benchmark scripts working on every allowed version."""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402


def test_weights_only_is_passed_only_where_lightning_takes_it(monkeypatch):
    """pytorch-lightning 2.5 (allowed by pyproject) has no `weights_only` on Trainer.fit: the
    training scripts passed it anyway and stopped with a TypeError after setting up the data."""
    if tuple(int(x) for x in pl.__version__.split(".")[:2]) >= (2, 6):
        assert _common.safe_fit_kwargs() == {"weights_only": True}

    def fit_25(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None):
        pass

    monkeypatch.setattr(pl.Trainer, "fit", fit_25)
    assert _common.safe_fit_kwargs() == {}


def test_benchmark_arguments_refuse_values_that_meant_no_limit_or_never_stop():
    """`--limit-train 0` trained on the whole set (0 read as "no limit"), `--max_minutes nan` never
    stopped, `--beams 1,0` failed only after the greedy pass, `--rounds 0` ended in a traceback."""
    import argparse
    import math

    import pytest

    for parse, bad in ((_common.positive_int, "0"), (_common.positive_float, "nan"), (_common.positive_float, "0"),
                       (_common.positive_float, "inf"), (_common.nonnegative_int, "-1"), (_common.positive_ints, "1,0")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert _common.positive_float("2.5") == 2.5 and _common.nonnegative_int("0") == 0
    with pytest.raises(ValueError, match="finite number > 0"):
        _common.StopBeforeDeadline(math.nan)


def test_step_benchmarks_run_under_the_configs_precision():
    """The step benchmarks time a bf16 config under bf16 autocast (its `_base_` chain sets it) and
    an fp32 config without autocast."""
    import torch

    experiments = Path(__file__).resolve().parents[1] / "experiments" / "translation"
    bf16 = _common.config_precision(str(experiments / "multi30k_en_de_tiny_fairseq.yaml"))
    fp32 = _common.config_precision(str(experiments / "multi30k_en_de_tiny.yaml"))
    assert (bf16, fp32) == ("bf16-mixed", "32-true")
    x = torch.ones(2, 2)
    with _common.cpu_autocast(bf16):
        assert (x @ x).dtype == torch.bfloat16
    with _common.cpu_autocast(fp32):
        assert (x @ x).dtype == torch.float32


def test_trim_heap_gives_back_freed_heap_pages_and_logs_rss(tmp_path):
    """Holes left in the heap (every 10th block kept) are not returned by free's top trimming;
    malloc_trim(0) returns their pages, and the callback logs RSS before and after."""
    from types import SimpleNamespace

    import torch

    cb = _common.TrimHeapEachEpoch(tmp_path / "trim.jsonl")
    blocks = [torch.ones(16_000) for _ in range(4000)]  # 64 KB each (below glibc's mmap threshold), 256 MB
    kept = blocks[::10]
    del blocks
    cb.on_train_epoch_end(SimpleNamespace(current_epoch=3), None)
    line = json.loads((tmp_path / "trim.jsonl").read_text())
    assert line["epoch"] == 3 and set(line) == {"epoch", "rss_mb_before", "rss_mb_after"}
    assert line["rss_mb_before"] - line["rss_mb_after"] > 100, line  # ~230 MB of holes
    del kept  # alive until after the trim, so the freed blocks were holes, not the heap's top


def test_average_at_patience_saves_the_snapshot_average_where_fairseq_would_stop(tmp_path):
    """fairseq's `--patience 3`: a tie is no improvement, the third validation in a row without a
    lower loss stops. The file must hold the average of the epoch snapshots, and training goes on
    with the model's own weights; a resumed run keeps the count."""
    import types

    import torch

    from tx_suite.tasks.callbacks.translation_averaging import CheckpointAveraging

    module = torch.nn.Linear(2, 1)
    averaging = CheckpointAveraging(last_n=2)
    saved = {}

    def save_checkpoint(path, weights_only):
        saved[path.name] = {k: v.clone() for k, v in module.state_dict().items()}

    trainer = types.SimpleNamespace(sanity_checking=False, callback_metrics={}, callbacks=[averaging],
                                    checkpoint_callback=None, default_root_dir=str(tmp_path), is_global_zero=True,
                                    save_checkpoint=save_checkpoint, current_epoch=0)
    cb = _common.AverageAtPatience(3)
    fired = []
    for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.0, 2.1, 1.0]):
        trainer.current_epoch = epoch
        with torch.no_grad():
            module.weight.fill_(epoch)
        averaging.snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        trainer.callback_metrics = {"val/loss": torch.tensor(loss)}
        cb.on_validation_end(trainer, module)
        fired.append(cb.stop_epoch)
        if epoch == 2:  # a resume between two validations
            cb, state = _common.AverageAtPatience(3), cb.state_dict()
            cb.load_state_dict(state)
    assert fired == [None, None, None, None, 4, 4]  # once, at the third validation after the best (2.0)
    assert list(saved) == ["averaged_patience.ckpt"]
    assert torch.equal(saved["averaged_patience.ckpt"]["weight"], torch.full((1, 2), 3.5))  # epochs 3 and 4
    assert torch.equal(module.weight, torch.full((1, 2), 5.0))
    assert cb.best == 2.0


def test_patience_average_refuses_a_sparser_validation_schedule(tmp_path):
    """fairseq's patience counts epochs: with a validation every 5th epoch `--patience_average 10`
    would wait 50 epochs, so the script stops with a usage error before any training."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "val5.yaml"
    cfg.write_text(f"_base_: [{root}/experiments/translation/multi30k_en_de_tiny_fairseq_lc.yaml]\n"
                   "trainer:\n  check_val_every_n_epoch: 5\n")
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "translation_train.py"), "--config", str(cfg),
                          "--out", str(tmp_path / "out"), "--patience_average", "10"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert res.returncode == 2 and "check_val_every_n_epoch: 1" in res.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
