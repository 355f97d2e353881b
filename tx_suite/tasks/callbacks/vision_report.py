"""What a classifier gets wrong: confusion matrix, per-class accuracy, misclassified images.

After each validation run (every ``every_n_epochs``) and after testing, from the task's
torchmetrics state (:attr:`ImageClassification.last_confmat` / ``last_acc_class``) and the
first ``max_images`` misclassified images of the epoch:

- with a ``WandbLogger``: ``{stage}/confusion_matrix`` (image), ``{stage}/per_class_accuracy``
  (table) and ``{stage}/misclassified`` (table of image, label, prediction, probability);
- otherwise under ``<run dir>/figures/``: ``confusion_<tag>.png``, ``misclassified_<tag>.png``
  and ``per_class_<tag>.json``, tag = ``val_e<epoch>`` or ``test``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from tx_suite.tasks.callbacks.due import validation_due
from tx_suite.tasks.callbacks.log_step import metrics_log_step
from tx_suite.tasks.callbacks.vision_attention import figure_tag, figure_to_image, log_figure


def confusion_figure(confmat: torch.Tensor, classes: list[str]):
    """Matplotlib figure of a ``(K, K)`` confusion matrix (rows = true class, columns = predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k), max(4, 0.45 * k)))
    # log scale: on a good model the diagonal is 100x the errors and would hide them
    ax.imshow(torch.log1p(confmat.float()).numpy(), cmap="Blues")
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        for i in range(k):
            for j in range(k):
                if confmat[i, j]:
                    ax.text(j, i, int(confmat[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if i == j else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


class ClassificationReport(pl.Callback):
    """Log the confusion matrix, per-class accuracy and misclassified images of val / test.

    Args:
        max_images: misclassified images kept per epoch (the first ones met).
        every_n_epochs: report after every n-th validation epoch of a fit and its last (and always
            after `validate` and testing; see :func:`~tx_suite.tasks.callbacks.due.validation_due`).
    """

    def __init__(self, max_images: int = 32, every_n_epochs: int = 1) -> None:
        self.max_images = max_images
        self.every_n_epochs = every_n_epochs
        self._wrong: list[tuple[torch.Tensor, int, int, float]] = []

    def _due(self, trainer: pl.Trainer, stage: str) -> bool:
        return stage == "test" or validation_due(trainer, self.every_n_epochs)

    def _collect(self, trainer, outputs, batch, stage: str) -> None:
        if not self._due(trainer, stage) or len(self._wrong) >= self.max_images or not isinstance(outputs, dict):
            return
        x, y = batch
        probs = outputs["logits"].float().softmax(-1)
        conf, pred = probs.max(-1)
        for i in torch.nonzero(pred != y).flatten().tolist()[: self.max_images - len(self._wrong)]:
            self._wrong.append((x[i].detach().cpu(), int(y[i]), int(pred[i]), float(conf[i])))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, batch, "test")

    # *_end, not *_epoch_end: callbacks' epoch-end hooks run before the task's, which computes
    # the confusion matrix.
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._due(trainer, "val"):
            self.report(trainer, pl_module, "val")
        self._wrong = []

    def on_test_end(self, trainer, pl_module) -> None:
        self.report(trainer, pl_module, "test")
        self._wrong = []

    def report(self, trainer: pl.Trainer, pl_module, stage: str) -> dict:
        """Write / log the report; returns ``{name: "wandb" or file path}``."""
        if not trainer.is_global_zero or stage not in pl_module.last_confmat:
            return {}
        from pytorch_lightning.loggers import WandbLogger

        meta = pl_module.meta
        confmat, acc = pl_module.last_confmat[stage], pl_module.last_acc_class[stage]
        classes = meta.get("classes") or [str(i) for i in range(confmat.shape[0])]
        tag = figure_tag(trainer, stage)
        done = {"confusion": log_figure(trainer, f"{stage}/confusion_matrix",
                                        figure_to_image(confusion_figure(confmat, classes)), f"confusion_{tag}.png")}
        mean = torch.tensor(meta.get("mean", [0.0]))[:, None, None]
        std = torch.tensor(meta.get("std", [1.0]))[:, None, None]
        wrong = [((img * std + mean).clamp(0, 1), t, p, c) for img, t, p, c in self._wrong]
        # A class absent from the evaluated slice has no accuracy (NaN): None in the table / JSON.
        per_class = [[c, None if a != a else float(a), int(confmat[i].sum())]
                     for i, (c, a) in enumerate(zip(classes, acc.tolist()))]
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb is not None:
            import wandb as wb

            step = metrics_log_step(trainer)
            wandb.log_table(f"{stage}/per_class_accuracy", ["class", "accuracy", "count"], per_class, step=step)
            # wandb.Image casts a float array straight to uint8 (a [0, 1] image turns all black); a PIL
            # image is unambiguous, as in generation_images.
            rows = [[wb.Image(to_pil_image(img.float().clamp(0, 1).cpu())), classes[t], classes[p], c]
                    for img, t, p, c in wrong]
            wandb.log_table(f"{stage}/misclassified", ["image", "label", "prediction", "probability"], rows, step=step)
            done.update(per_class="wandb", misclassified="wandb")
            return done
        folder = Path(trainer.default_root_dir) / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"per_class_{tag}.json"
        path.write_text(json.dumps({c: {"accuracy": a, "count": n} for c, a, n in per_class}, indent=1))
        done["per_class"] = str(path)
        if wrong:
            done["misclassified"] = str(self._misclassified_png(wrong, classes, folder / f"misclassified_{tag}.png"))
        return done

    @staticmethod
    def _misclassified_png(wrong, classes, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = 8
        rows = (len(wrong) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (img, t, p, c) in zip(axes.flat, wrong):
            ax.imshow(make_grid([img], padding=0).permute(1, 2, 0).numpy())
            ax.set_title(f"{classes[t]}->{classes[p]} {c:.2f}", fontsize=7)
        fig.tight_layout()
        figure_to_image(fig).save(path)
        return path
