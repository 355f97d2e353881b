"""JudgeTask: trains the SceneJudge on real Captioned MNIST scenes (the fidelity instrument)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchvision.transforms import v2

from tx_suite.data.captions import COLOURS, POSITIONS, SIZES
from tx_suite.models.judge import SceneJudge
from tx_suite.tasks.one_cycle import one_cycle
from tx_suite.tasks.run_length import total_training_steps
from tx_suite.tasks.vqvae import read_checkpoint

CLASSES = {"digit": 10, "colour": len(COLOURS), "size": len(SIZES), "position": len(POSITIONS)}
SUBSETS = ("seen", "heldout")


class JudgeTask(pl.LightningModule):
    """Multi-head classification of scene attributes; loss = sum of the heads' cross-entropies.

    Args:
        width, dropout: :class:`~tx_suite.models.judge.SceneJudge` size and regularisation.
        lr, weight_decay: AdamW (Loshchilov and Hutter 2019) with a one-cycle schedule
            (Smith and Topin 2018).
        blur_prob: probability of a random Gaussian blur (sigma 0.1-1.0 px) per training image,
            so the judge also reads the slightly soft images a VQ-VAE decoder produces.

    Logged: ``{stage}/loss``, ``{stage}/acc_{attribute}`` and ``{stage}/acc_all`` (every attribute
    right), and on val/test the same split by ``_seen`` / ``_heldout`` (digit-colour) combinations
    (NaN for a subset the split does not contain, e.g. ``_heldout`` with ``eval_combos: seen``).
    """

    def __init__(self, width: int = 16, dropout: float = 0.2, lr: float = 3e-3,
                 weight_decay: float = 1e-4, blur_prob: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = SceneJudge(width=width, dropout=dropout, classes=CLASSES)
        self.blur = v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=blur_prob)
        # Micro accuracy as the mean of per-image correctness: MeanMetric takes an empty batch (a
        # step with no scene of the subset), torchmetrics' MulticlassAccuracy raises on one.
        self.metrics = nn.ModuleDict({
            f"{stage}_{attr}_{subset}": MeanMetric()
            for stage in ("val", "test") for attr in CLASSES for subset in SUBSETS
        })

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def _loss(self, logits: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        return sum(F.cross_entropy(logits[k], batch[k]) for k in CLASSES)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if self.hparams.blur_prob > 0:
            images = torch.stack([self.blur(im) for im in images])
        logits = self(images)
        loss = self._loss(logits, batch)
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k in CLASSES:
            self.log(f"train/acc_{k}", (logits[k].argmax(-1) == batch[k]).float().mean(), batch_size=n)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["image"])
        n = len(batch["image"])
        self.log(f"{stage}/loss", self._loss(logits, batch), prog_bar=True, batch_size=n, sync_dist=True)
        correct_all = torch.ones_like(batch["digit"], dtype=torch.bool)
        for k in CLASSES:
            pred = logits[k].argmax(-1)
            correct_all &= pred == batch[k]
            self.log(f"{stage}/acc_{k}", (pred == batch[k]).float().mean(), batch_size=n, sync_dist=True)
            for subset in SUBSETS:
                mask = batch["heldout"] if subset == "heldout" else ~batch["heldout"]
                # logged on every step, as TextToImageTask's subsets: a DDP sync needs every rank
                metric = self.metrics[f"{stage}_{k}_{subset}"]
                metric.update((pred[mask] == batch[k][mask]).float())
                self.log(f"{stage}/acc_{k}_{subset}", metric, batch_size=max(int(mask.sum()), 1))
        self.log(f"{stage}/acc_all", correct_all.float().mean(), prog_bar=True, batch_size=n,
                 sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        sched = one_cycle(opt, self.hparams.lr, total_training_steps(self.trainer, "one-cycle"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_judge(path: str, map_location: str | torch.device = "cpu") -> SceneJudge:
    """The SceneJudge of a JudgeTask checkpoint, in eval mode.

    Raises:
        FileNotFoundError: no such file. ValueError: not a JudgeTask checkpoint.
    """
    ckpt = read_checkpoint(path, "judge", required=("width", "dropout"), map_location=map_location)
    h = ckpt["hyper_parameters"]
    model = SceneJudge(width=h["width"], dropout=h["dropout"], classes=CLASSES)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def judge_predictions(judge: SceneJudge, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Log-probabilities per attribute: ``{attribute: (B, n_classes)}`` for ``(B, 3, H, W)`` images."""
    judge.eval()
    outs = [judge(chunk) for chunk in images.split(batch_size)]
    return {k: torch.cat([o[k] for o in outs]).log_softmax(-1) for k in CLASSES}


def caption_scores(judge: SceneJudge, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Re-ranking score ``sum_a log p_judge(a = caption's value)`` over the four attributes: ``(B,)``.

    Raises:
        ValueError: a caption that is not a Captioned MNIST caption (see ``parse_caption``).
    """
    from tx_suite.data.captions import parse_caption

    attrs = [parse_caption(c) for c in captions]
    logp = judge_predictions(judge, images)
    score = torch.zeros(len(attrs), device=images.device)
    for k in CLASSES:
        target = torch.tensor([getattr(a, k) for a in attrs], device=images.device)
        score += logp[k].gather(1, target[:, None]).squeeze(1)
    return score
