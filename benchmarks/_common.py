"""Helpers shared by the training benchmarks (``translation_train.py``, ``vision_train.py``).

Imported as ``_common`` (a script's own folder is first on ``sys.path``); not part of the package.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]


def build(spec: dict, **extra):
    """Instantiate a ``{class_path, init_args}`` spec of an experiment YAML; ``extra`` overrides init_args."""
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**{**(spec.get("init_args") or {}), **extra})


def safe_fit_kwargs() -> dict:
    """``weights_only=True`` for ``Trainer.fit`` and ``load_from_checkpoint`` where this Lightning
    has it (2.6+; pyproject allows 2.5, whose ``fit`` refuses the keyword and whose
    ``load_from_checkpoint`` would pass it to the model's ``__init__``)."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(pl.Trainer.fit).parameters else {}


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 batches or steps would only fail later, in a division)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``nan`` minutes never ran out)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1 (``"1,5"``)."""
    return [positive_int(part) for part in text.split(",")]


def finite_floats(text: str) -> list[float]:
    """argparse type: comma-separated finite numbers (``"0.6,1.0"``)."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if not math.isfinite(values[-1]):
            raise argparse.ArgumentTypeError(f"not a finite number: {part!r}")
    return values


def repo_path(path: str) -> str:
    """``path`` as given if it exists from here, else relative to the repository (so the default
    configs work from any directory)."""
    from tx_suite.data.checksums import resolve_data_dir  # the same rule as the data roots

    return str(resolve_data_dir(path))


def step_benchmark_args(description: str, config: str = "experiments/translation/multi30k_en_de_tiny.yaml",
                        flags: dict[str, str] | None = None) -> argparse.Namespace:
    """Command line of the translation step-timing benchmarks: ``--config`` (default ``config``),
    ``--batches``, ``--repeats``, and a boolean option per ``flags`` entry (``{"--flag": help}``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default=config, type=repo_path)
    for flag, help_text in (flags or {}).items():
        ap.add_argument(flag, action="store_true", help=help_text)
    ap.add_argument("--batches", type=positive_int, default=4, help="real training batches per timed pass")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed passes per variant (alternating)")
    return ap.parse_args()


def translation_setup(config: str, n_batches: int):
    """``(task, batches)``: the TranslationTask of an experiment config and its datamodule's first
    ``n_batches`` real training batches, seed 0 (the step-timing benchmarks)."""
    from tx_suite.utils.config import load_config

    cfg = load_config(Path(config))
    pl.seed_everything(0, verbose=False)
    dm = build(cfg["data"])
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(n_batches)]
    return build(cfg["model"]), batches


def config_precision(config: str) -> str:
    """``trainer.precision`` of an experiment config (``_base_`` merged), ``"32-true"`` if unset."""
    from tx_suite.utils.config import load_config

    return str((load_config(Path(config)).get("trainer") or {}).get("precision", "32-true"))


def cpu_autocast(precision: str):
    """A context manager for a step as ``Trainer(precision=precision)`` runs it on the CPU: bf16
    autocast for ``bf16-mixed``, none otherwise."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    """CPU model, core count, torch version and threads, OMP wait policy: what a RESULTS row needs."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def segment_logger(out: Path, epochs_before: int):
    """CSV logger of one process of a run: ``<out>/metrics.csv`` for a fresh run,
    ``<out>/resumed_at_epoch_<n>/metrics.csv`` for a resumed one (Lightning's CSV logger would
    otherwise delete the earlier segment's file)."""
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(str(out), name="", version=f"resumed_at_epoch_{epochs_before}" if epochs_before else "")


class StopBeforeDeadline(pl.Callback):
    """Stop at the first epoch end after which one more epoch (as long as the last one) would end
    past ``minutes`` from now.

    The run then stops at an epoch boundary, where ``last.ckpt`` is written, ready for a later
    ``--resume``. ``trainer.max_time`` is a poor fit for runs split over several processes: it
    stops mid-epoch, and Lightning restores its clock from the checkpoint on resume.
    """

    def __init__(self, minutes: float):
        if not math.isfinite(minutes) or minutes <= 0:
            raise ValueError(f"max minutes must be a finite number > 0, got {minutes}")
        self.deadline = time.time() + 60 * minutes
        self.t_epoch = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.time()
        if now + (now - self.t_epoch) > self.deadline:
            trainer.should_stop = True
            print(json.dumps({"stopped": "max_minutes", "epoch": trainer.current_epoch}), flush=True)
        self.t_epoch = now


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc/self/status`` VmRSS)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class TrimHeapEachEpoch(pl.Callback):
    """After each training epoch, glibc's ``malloc_trim(0)`` (free heap pages back to the system),
    with this process's RSS before and after appended to ``path`` as a JSON line.

    A diagnostic for the RSS growth of long CPU runs (RESULTS.md, *the fused loss*): it tells freed
    heap that glibc keeps from memory still in use.

    Raises:
        OSError: not Linux with glibc (no ``/proc/self/status`` or no ``malloc_trim``).
    """

    def __init__(self, path: Path):
        import ctypes

        try:
            self.malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            rss_mb()  # fail here, not after the first epoch
        except (OSError, AttributeError) as e:
            raise OSError(f"heap trimming needs Linux with glibc (malloc_trim, /proc/self/status): {e}") from e
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module):
        before = rss_mb()
        self.malloc_trim(0)
        line = {"epoch": trainer.current_epoch, "rss_mb_before": round(before), "rss_mb_after": round(rss_mb())}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class AverageAtPatience(pl.Callback):
    """Save the running last-N average at the epoch where fairseq's ``--patience P`` would stop
    training, and train on.

    fairseq stops once the validation loss has not improved on its best for ``patience``
    validations in a row (``should_stop_early`` in its ``train.py``); the reference's
    ``evaluate.sh`` then averages the last 10 epoch checkpoints. At the first such validation this
    callback saves the average of the :class:`CheckpointAveraging` snapshots (the last N epoch
    ends, this epoch included) as ``filename`` and records the epoch in ``stop_epoch``, without
    stopping: one run then gives the average at the stop and at the end of its schedule from the
    same random stream. Its state survives a resume.

    Args:
        patience: validations without a new best (strictly lower ``monitor``) before the stop.
        monitor: the logged metric; lower is better.
        filename: the averaged checkpoint, next to ``last.ckpt``.

    Raises:
        ValueError: ``patience`` < 1.
        RuntimeError: (at the stop) the trainer has no ``CheckpointAveraging`` callback.
    """

    def __init__(self, patience: int, monitor: str = "val/loss", filename: str = "averaged_patience.ckpt"):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.monitor, self.filename = patience, monitor, filename
        self.best: float | None = None
        self.wait = 0
        self.stop_epoch: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.stop_epoch is not None or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or value < self.best:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            from tx_suite.tasks.callbacks.translation_averaging import CheckpointAveraging

            averaging = next((c for c in trainer.callbacks if isinstance(c, CheckpointAveraging)), None)
            if averaging is None:
                raise RuntimeError("AverageAtPatience needs a CheckpointAveraging callback (the config's last_n)")
            averaging.save_average(trainer, pl_module, self.filename)
            self.stop_epoch = trainer.current_epoch
            print(json.dumps({"patience_stop": self.stop_epoch, "best": self.best, "averaged": len(averaging.snapshots)}),
                  flush=True)

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stop_epoch": self.stop_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.wait, self.stop_epoch = state_dict["best"], state_dict["wait"], state_dict["stop_epoch"]


def translation_pass(task, batches, opt, context) -> float:
    """Mean seconds per training step of ``task`` over ``batches``: forward and loss inside
    ``context()``, backward, gradient clipping at 1.0, ``opt.step()`` (the step-timing benchmarks)."""
    import torch

    params = list(task.model.parameters())
    t0 = time.perf_counter()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        with context():
            loss_sum, _, n = task._loss(b)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return (time.perf_counter() - t0) / len(batches)


def alternate(run, names, repeats: int) -> dict[str, list[float]]:
    """``run(name)`` once per name as warm-up (allocator, thread pool, bf16 weight casts), then
    ``repeats`` rounds over all names in turn, so machine noise hits every variant alike."""
    for name in names:
        run(name)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(run(name))
    return times
