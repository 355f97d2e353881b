"""Checkpoint averaging: the mean of the weights of the last N checkpoints.

Vaswani et al. 2017, §6.1: "For the base models, we used a single model obtained by averaging the
last 5 checkpoints". Implemented like fairseq's ``scripts/average_checkpoints.py``: every floating
point tensor of the state dict is averaged (in float64 for accuracy), other tensors (integer
buffers) are taken from the last checkpoint.

Three ways to use it:

* :func:`average_checkpoints` on checkpoint files, or from the shell
  ``python -m tx_suite.tasks.callbacks.translation_averaging OUT.ckpt IN1.ckpt IN2.ckpt ...``;
* :func:`average_snapshots` on the epoch snapshots that a checkpoint written by the callback
  holds, for a shorter window than the run's (``... OUT.ckpt --snapshots last.ckpt --last 5``);
* :class:`CheckpointAveraging`, a callback that keeps the weights of the last ``last_n`` epochs
  (in memory and in each checkpoint, so resuming does not lose them) and writes
  ``averaged.ckpt`` next to ``last.ckpt`` when training ends.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from tx_suite.utils.checkpoint import CheckpointError, atomic_save, load_checkpoint
from tx_suite.utils.option_parser import OptionParser


SNAPSHOT_STATE_KEY = "CheckpointAveraging"  # the callback's state key in a checkpoint's "callbacks"


def average_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of floating-point tensors; other entries come from the last state dict.

    Raises:
        ValueError: empty input, or the state dicts differ in their keys (in any order), in a
            tensor's shape, or in whether a tensor is floating point.
    """
    if not state_dicts:
        raise ValueError("nothing to average")
    keys = list(state_dicts[-1].keys())
    for i, sd in enumerate(state_dicts):
        if set(sd.keys()) != set(keys):
            odd = sorted(set(sd.keys()) ^ set(keys))
            raise ValueError(f"state dict {i} and the last one differ in their keys ({odd[0]!r} ...)")
    out: dict[str, Tensor] = {}
    for k in keys:
        last = state_dicts[-1][k]
        if any(sd[k].shape != last.shape for sd in state_dicts):
            raise ValueError(f"tensor {k!r} has different shapes across checkpoints")
        if any(torch.is_floating_point(sd[k]) != torch.is_floating_point(last) for sd in state_dicts):
            raise ValueError(f"tensor {k!r} is floating point in some checkpoints and not in others")
        if not torch.is_floating_point(last):
            out[k] = last.clone()
            continue
        acc = torch.zeros(last.shape, dtype=torch.float64)
        for sd in state_dicts:
            acc += sd[k].detach().to("cpu", torch.float64)
        out[k] = (acc / len(state_dicts)).to(last.dtype)
    return out


def average_checkpoints(paths: Sequence[str | Path], output: str | Path | None = None) -> dict:
    """Average the ``state_dict`` of Lightning checkpoint files.

    The result is the last checkpoint with its ``state_dict`` replaced by the average and its
    optimizer/scheduler state and averaging snapshots removed (averaged weights match neither), so it
    loads anywhere the last one does (``tx-suite test --ckpt_path``, ``tx-suite translate``).

    Args:
        paths: checkpoint files, loaded with ``torch.load(..., weights_only=True)``
            (:func:`tx_suite.utils.checkpoint.load_checkpoint`).
        output: where to write the averaged checkpoint (optional).

    Raises:
        tx_suite.utils.checkpoint.CheckpointError: a file is missing, corrupt or unsafe.
        ValueError: a file is not a Lightning checkpoint, the weights do not match, or the files
            disagree on the task or on what the weights mean (:data:`MEANING_KEYS`).
    """
    ckpts = []
    for p in paths:
        ckpt = load_checkpoint(p)
        if "state_dict" not in ckpt:
            raise ValueError(f"{p} is not a Lightning checkpoint (no state_dict)")
        ckpts.append(ckpt)
    _check_same_model(ckpts, paths)
    return _with_weights(ckpts[-1], average_state_dicts([c["state_dict"] for c in ckpts]),
                         [str(p) for p in paths], output)


#: Checkpoint entries that say what the weights mean: the translation BPE model, the text-to-image
#: caption tokenizer and VQ-VAE codebook, the classifier's class names and normalisation. Weights of
#: the same shapes trained with another vocabulary average into nonsense.
MEANING_KEYS = ("tokenizer", "caption_tokenizer", "tokenizer_fingerprint", "tx_suite_vision")


def _check_same_model(ckpts: Sequence[dict], paths: Sequence[str | Path]) -> None:
    classes = [str(c.get("hyper_parameters", {}).get("_class_path", "")).rsplit(".", 1)[-1] for c in ckpts]
    for i, ckpt in enumerate(ckpts[:-1]):
        if classes[i] != classes[-1]:
            def kind(c: str) -> str:
                return f"a {c} checkpoint" if c else "a checkpoint that names no task class"

            raise ValueError(f"{paths[i]} is {kind(classes[i])} and {paths[-1]} {kind(classes[-1])}: "
                             "average checkpoints of one model")
        for key in MEANING_KEYS:
            if ckpt.get(key) != ckpts[-1].get(key):
                raise ValueError(f"{paths[i]} and {paths[-1]} differ in {key!r} (another vocabulary, "
                                 "codebook or label set): average checkpoints of one run")


def _with_weights(ckpt: dict, state_dict: dict[str, Tensor], sources: list[str],
                  output: str | Path | None) -> dict:
    """``ckpt`` with averaged weights, without the state that no longer matches them (optimizer,
    scheduler, the averaging snapshots); written to ``output`` if given."""
    out = dict(ckpt, state_dict=state_dict, averaged_from=sources)
    for key in ("optimizer_states", "lr_schedulers"):
        out.pop(key, None)
    if "callbacks" in out:
        out["callbacks"] = {k: v for k, v in out["callbacks"].items() if k != SNAPSHOT_STATE_KEY}
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_save(out, output)
    return out


def average_snapshots(path: str | Path, last: int | None = None, output: str | Path | None = None) -> dict:
    """Average the last ``last`` (default: all) epoch snapshots that :class:`CheckpointAveraging`
    stored in a checkpoint.

    A run that kept the last 10 epochs (``last_n=10``) can so also be scored on the average of
    its last 5, without the epoch files. The result is the checkpoint with its ``state_dict``
    replaced by the average and its optimizer, scheduler and snapshot state removed, as
    :func:`average_checkpoints` returns.

    Raises:
        tx_suite.utils.checkpoint.CheckpointError: the file is missing, corrupt or unsafe.
        ValueError: the checkpoint holds no snapshots, fewer than ``last``, or ``last < 1``.
    """
    if last is not None and last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    ckpt = load_checkpoint(path)
    snapshots = (ckpt.get("callbacks") or {}).get(SNAPSHOT_STATE_KEY, {}).get("snapshots") or []
    if not snapshots:
        raise ValueError(f"{path} holds no CheckpointAveraging snapshots")
    last = len(snapshots) if last is None else last
    if len(snapshots) < last:
        raise ValueError(f"{path} holds {len(snapshots)} snapshots, fewer than the {last} asked for")
    return _with_weights(ckpt, average_state_dicts(snapshots[-last:]),
                         [f"{path}: last {last} of {len(snapshots)} epoch snapshots"], output)


def _cpu_copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy a state dict to the CPU, once per tensor: tied weights (shared embeddings, the tied
    output projection) stay one tensor, so a checkpoint stores them once."""
    copies: dict[tuple, Tensor] = {}
    out = {}
    for k, v in state.items():
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), v.shape, v.stride(), v.dtype)
        if key not in copies:
            copies[key] = v.detach().to("cpu", copy=True)
        out[k] = copies[key]
    return out


class CheckpointAveraging(pl.Callback):
    """Keep the weights at the end of the last ``last_n`` training epochs; write their average.

    At the end of ``fit`` the averaged weights are saved as ``averaged.ckpt`` in the
    ModelCheckpoint directory (or ``<default_root_dir>/checkpoints``); the model in memory keeps
    its last weights. Snapshots live on the CPU (``last_n`` copies of the weights).

    The snapshots are part of the callback's checkpoint state, so a run resumed from
    ``last.ckpt`` (or from a mid-epoch checkpoint) averages the same epochs as an uninterrupted
    run. The cost is disk: every checkpoint holds up to ``last_n`` extra copies of the weights.
    A snapshot is taken after the last training batch of an epoch, i.e. before the epoch-end
    validation and the checkpoint written after it; an epoch cut short (``max_steps``) is taken
    at its end.

    Args:
        last_n: number of epoch-end snapshots to average.
        filename: name of the averaged checkpoint.
    """

    def __init__(self, last_n: int = 5, filename: str = "averaged.ckpt"):
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        self.last_n = last_n
        self.filename = filename
        self.snapshots: deque[dict[str, Tensor]] = deque(maxlen=last_n)
        self.snapshot_epoch = -1  # the epoch of the newest snapshot
        self.snapshot_step: int | None = None  # and the global step it was taken at
        self.path: Path | None = None

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Once per epoch: Lightning also replays on_train_epoch_end when it resumes from a
        # checkpoint written at an epoch end (same step: skipped). An epoch cut short by max_steps
        # and then resumed with more steps reaches its real end later: that replaces the early
        # snapshot, as an uninterrupted run would only have taken this one. (A max_time stop is an
        # epoch end for Lightning: the resumed fit starts the next epoch and the rest of the cut
        # one is never trained, so its snapshot stays.)
        if self.snapshot_epoch == trainer.current_epoch:
            if self.snapshot_step is None or trainer.global_step <= self.snapshot_step:
                return
            self.snapshots.pop()
        self.snapshots.append(_cpu_copy(pl_module.state_dict()))
        self.snapshot_epoch, self.snapshot_step = trainer.current_epoch, trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._take(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"snapshots": list(self.snapshots), "snapshot_epoch": self.snapshot_epoch,
                "snapshot_step": self.snapshot_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.snapshots = deque(state_dict.get("snapshots", []), maxlen=self.last_n)
        self.snapshot_epoch = state_dict.get("snapshot_epoch", -1)
        self.snapshot_step = state_dict.get("snapshot_step")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A fast_dev_run writes no checkpoint (RunCheckpoint's rule): an averaged.ckpt would make
        # the smoke run the one --ckpt_path last|best finds, and it has no last.ckpt.
        if not self.snapshots or trainer.fast_dev_run:
            return
        self.path = self.save_average(trainer, pl_module, self.filename)

    def save_average(self, trainer: pl.Trainer, pl_module: pl.LightningModule, filename: str) -> Path:
        """Save the average of the snapshots held now as ``filename`` in the checkpoint folder
        (weights only); the model keeps its current weights. Also usable during ``fit``.

        Raises:
            RuntimeError: no snapshot taken yet.
        """
        if not self.snapshots:
            raise RuntimeError("no epoch snapshot to average yet")
        ckpt_cb = trainer.checkpoint_callback
        folder = Path(ckpt_cb.dirpath) if ckpt_cb is not None and getattr(ckpt_cb, "dirpath", None) else (
            Path(trainer.default_root_dir) / "checkpoints")
        current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(average_state_dicts(list(self.snapshots)))
        path = folder / filename
        try:
            trainer.save_checkpoint(path, weights_only=True)
        finally:
            pl_module.load_state_dict(current)
        if trainer.is_global_zero:
            print(f"averaged the last {len(self.snapshots)} epoch weights into {path}", file=sys.stderr)
        return path


def _check_output(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that would destroy what the user has: one of the inputs, or a training
    checkpoint (its optimizer state, needed to resume, is not in an average), or a non-empty file
    that is no checkpoint. An earlier average, and an empty file (``mktemp``), are replaced."""
    if not output.exists():
        return
    if output.is_dir():
        raise ValueError(f"{output} is a directory: give a file name for the averaged checkpoint")
    if any(p.exists() and output.samefile(p) for p in inputs):
        raise ValueError(f"{output} is also an input: write the average to another file")
    if not output.is_file() or output.stat().st_size == 0:
        return
    try:
        training = "optimizer_states" in load_checkpoint(output)
    except CheckpointError:
        raise ValueError(f"{output} exists and is not a checkpoint: remove it or choose another output "
                         "file") from None
    if training:
        raise ValueError(f"{output} is a training checkpoint (it holds optimizer state to resume from): "
                         "write the average to another file")


def main(argv: Sequence[str] | None = None, prog: str = "python -m tx_suite.tasks.callbacks.translation_averaging") -> int:
    ap = OptionParser(prog=prog, description="Average the weights of Lightning checkpoints.")
    ap.add_argument("output", help="averaged checkpoint to write")
    ap.add_argument("inputs", nargs="*", help="checkpoints to average (e.g. the last 5 epochs)")
    ap.add_argument("--snapshots", metavar="CKPT",
                    help="average the epoch snapshots kept in CKPT by CheckpointAveraging instead")
    ap.add_argument("--last", type=int, default=None, help="with --snapshots: how many of the newest (default: all)")
    args = ap.parse_args(argv)
    if bool(args.inputs) == bool(args.snapshots):
        ap.error("give either checkpoint files or --snapshots CKPT")
    if args.last is not None and not args.snapshots:
        ap.error("--last goes with --snapshots")
    try:
        _check_output(Path(args.output), [Path(p) for p in (args.inputs or [args.snapshots])])
        if args.inputs and len(args.inputs) < 2:
            raise ValueError(f"one checkpoint to average ({args.inputs[0]}): give two or more "
                             f"({prog} OUT.ckpt IN1.ckpt IN2.ckpt ...)")
        if args.snapshots:
            out = average_snapshots(args.snapshots, args.last, args.output)
            what = out["averaged_from"][0]
        else:
            average_checkpoints(args.inputs, args.output)
            what = f"average of {len(args.inputs)} checkpoints"
    except ValueError as e:  # CheckpointError included
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
