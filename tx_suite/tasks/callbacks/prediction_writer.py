"""Write what ``predict`` computed to the run directory, in dataset order.

Lightning's ``predict`` returns the outputs of ``predict_step`` to the caller; ``tx-suite predict``
(LightningCLI) has no caller to return them to, so without this callback they were discarded.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import move_data_to_device, rank_zero_warn


class PredictionWriter(BasePredictionWriter):
    """At the end of ``predict``, write the predictions to ``<run dir>/predictions.*``.

    Batches may come in any order (translation batches are bucketed by length); Lightning tracks
    each sample's dataset index, and the files follow the dataset order:

    * ``predict_step`` returns ``list[str]`` (translation): ``predictions.txt``, line ``n`` = sample
      ``n``; when only some samples were predicted (``limit_predict_batches``),
      ``predictions.tsv`` with ``index<TAB>text`` lines;
    * it returns a ``(B, C)`` tensor of class probabilities (classification):
      ``predictions.csv`` with ``index, label, probability`` of the top class (``label`` is the
      class name when the task knows them, ``pl_module.meta["classes"]``, else the class id);
    * it returns a dict with an ``image`` ``(B, 3, H, W)`` tensor in [0, 1] (text-to-image samples,
      VQ-VAE reconstructions): ``predictions/<index>.png``, plus ``predictions.tsv`` with
      ``index``, ``file`` and the dict's string fields (``caption``), plus ``predictions.pt``
      (``{"index": (N,), key: (N, ...)}``) for its other tensor fields (VQ-VAE ``codes``).

    Other outputs are left to the caller, with a warning. Under DDP the ranks' predictions are
    gathered and global rank 0 writes them all.

    Args:
        output_dir: where to write (default: ``trainer.default_root_dir``, the run directory under
            ``tx-suite``).
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        pairs = _local_pairs(predictions, batch_indices)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Under DDP each rank predicted its shard: collect them all on rank 0. A sampler that
            # pads the last batches with repeated samples (DistributedSampler) or an unsharded
            # loader gives some indices twice; they are the same sample, kept once.
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pairs)
            pairs = None if any(g is None for g in gathered) else sorted(
                dict(p for g in gathered for p in g).items(), key=lambda p: p[0])
        if not trainer.is_global_zero or not pairs:
            return
        out_dir = Path(self.output_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        first = pairs[0][1]
        if isinstance(first, str):
            if [i for i, _ in pairs] == list(range(len(pairs))):
                path = out_dir / "predictions.txt"  # line n = sample n
                lines = (" ".join(text.split()) for _, text in pairs)
            else:  # a subset (limit_predict_batches): keep the index with each line
                path = out_dir / "predictions.tsv"
                lines = (f"{i}\t{' '.join(text.split())}" for i, text in pairs)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        elif isinstance(first, dict) and torch.is_tensor(first.get("image")):
            path = _write_images(out_dir, pairs)
        elif torch.is_tensor(first) and first.dim() == 1:
            classes = (getattr(pl_module, "meta", None) or {}).get("classes")
            path = out_dir / "predictions.csv"
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["index", "label", "probability"])
                for i, probs in pairs:
                    p, c = probs.float().max(0)
                    w.writerow([i, classes[int(c)] if classes else int(c), f"{float(p):.6f}"])
        else:
            rank_zero_warn(f"PredictionWriter: cannot write predictions of type {type(first).__name__}; skipped")
            return
        print(f"predict: {len(pairs)} predictions in {path}", file=sys.stderr)


def _local_pairs(predictions: Sequence[Any], batch_indices: Sequence[Any]) -> list[tuple[int, Any]] | None:
    """This process's ``(dataset index, prediction)`` pairs in index order (tensors on the CPU);
    None (with a warning) when the outputs are not something this writer understands."""
    if not predictions:
        return []
    # Lightning 2.6: batch_indices is (dataloaders x batches); predictions too, but for a single
    # dataloader it is unwrapped to (batches).
    if len(batch_indices) > 1:
        rank_zero_warn("PredictionWriter: several predict dataloaders; writing the first one's")
        predictions = predictions[0]
    pairs: list[tuple[int, Any]] = []
    for out, idx in zip(predictions, batch_indices[0]):
        rows = _rows(move_data_to_device(out, "cpu"))
        if rows is None or idx is None or len(rows) != len(idx):
            rank_zero_warn(f"PredictionWriter: cannot write predictions of type {type(out).__name__}; skipped")
            return None
        pairs.extend(zip((int(i) for i in idx), rows))
    return sorted(pairs, key=lambda p: p[0])


def _rows(out: Any) -> list[Any] | None:
    """One batch's output as one item per sample (a dict of per-sample values for dict outputs)."""
    if isinstance(out, (list, tuple)):
        return list(out)
    if torch.is_tensor(out):
        return list(out.unbind(0))
    if isinstance(out, dict) and out:
        columns = {k: list(v.unbind(0)) if torch.is_tensor(v) else list(v) for k, v in out.items()}
        if len({len(c) for c in columns.values()}) == 1:
            return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return None


def _write_images(out_dir: Path, pairs: list[tuple[int, dict]]) -> Path:
    """PNG per sample under ``predictions/``, an index TSV, and the other tensors in one file."""
    from torchvision.utils import save_image

    image_dir = out_dir / "predictions"
    image_dir.mkdir(exist_ok=True)
    width = max(6, len(str(pairs[-1][0])))
    text_keys = [k for k, v in pairs[0][1].items() if isinstance(v, str)]
    tensor_keys = [k for k, v in pairs[0][1].items() if torch.is_tensor(v) and k != "image"]
    lines = ["\t".join(["index", "file", *text_keys])]
    for i, row in pairs:
        name = f"{i:0{width}d}.png"
        save_image(row["image"].float().clamp(0, 1), image_dir / name)
        lines.append("\t".join([str(i), f"predictions/{name}",
                                *(" ".join(row[k].split()) for k in text_keys)]))
    path = out_dir / "predictions.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if tensor_keys:
        tensors = {"index": torch.tensor([i for i, _ in pairs])}
        tensors.update({k: torch.stack([row[k].cpu() for _, row in pairs]) for k in tensor_keys})
        torch.save(tensors, out_dir / "predictions.pt")
    return path
