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
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_warn


class PredictionWriter(BasePredictionWriter):
    """At the end of ``predict``, write the predictions to ``<run dir>/predictions.*``.

    Batches may come in any order (translation batches are bucketed by length); Lightning tracks
    each sample's dataset index, and the files follow the dataset order:

    * ``predict_step`` returns ``list[str]`` (translation): ``predictions.txt``, line ``n`` = sample
      ``n``; when only some samples were predicted (``limit_predict_batches``),
      ``predictions.tsv`` with ``index<TAB>text`` lines;
    * it returns a ``(B, C)`` tensor of class probabilities (classification):
      ``predictions.csv`` with ``index, label, probability`` of the top class (``label`` is the
      class name when the task knows them, ``pl_module.meta["classes"]``, else the class id).

    Other outputs are left to the caller, with a warning. Writes on global rank 0 only.

    Args:
        output_dir: where to write (default: ``trainer.default_root_dir``, the run directory under
            ``tx-suite``).
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        # Lightning 2.6: batch_indices is (dataloaders x batches); predictions too, but for a single
        # dataloader it is unwrapped to (batches).
        if len(batch_indices) > 1:
            rank_zero_warn("PredictionWriter: several predict dataloaders; writing the first one's")
            predictions = predictions[0]
        batch_indices = batch_indices[0]
        pairs: list[tuple[int, Any]] = []
        for out, idx in zip(predictions, batch_indices):
            rows = list(out) if isinstance(out, (list, tuple)) else list(out.unbind(0)) if torch.is_tensor(out) else None
            if rows is None or idx is None or len(rows) != len(idx):
                rank_zero_warn(f"PredictionWriter: cannot write predictions of type {type(out).__name__}; skipped")
                return
            pairs.extend(zip((int(i) for i in idx), rows))
        pairs.sort(key=lambda p: p[0])
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
