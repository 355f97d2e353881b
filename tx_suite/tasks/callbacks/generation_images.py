"""Image logging for the generation stages: reconstructions, codebook usage, sample grids.

Images go to the logger when it is a ``WandbLogger`` (``log_image``); otherwise they are written
as PNGs under ``<run dir>/images/`` so that CSV-only or logger-less runs keep them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

from tx_suite.tasks.callbacks.log_step import metrics_log_step
from tx_suite.tasks.callbacks.sharded import skip_rank_zero_forward


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: the logger's ``log_dir`` when it has one, else ``default_root_dir``."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(trainer.default_root_dir)


def log_image(trainer: pl.Trainer, key: str, image: torch.Tensor, caption: str | None = None) -> Path | None:
    """Send ``image`` ``(3, H, W)`` in [0, 1] to W&B, or save it as a PNG; returns the PNG path."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            # Lightning's log_image wants a list for every keyword it is given: no caption=None.
            extra = {"caption": [caption]} if caption else {}
            # wandb.Image casts a float tensor straight to uint8 (all black); a PIL image is unambiguous.
            pil = to_pil_image(image.detach().float().clamp(0, 1).cpu())
            logger.log_image(key=key, images=[pil], step=metrics_log_step(trainer), **extra)
            return None
    # the step too: with val_check_interval several validations share an epoch
    name = f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.png"
    path = run_dir(trainer) / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, path)
    if caption:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


def interleave_rows(top: torch.Tensor, bottom: torch.Tensor, nrow: int) -> torch.Tensor:
    """Rows of ``top`` followed by the matching rows of ``bottom``: inputs above reconstructions.

    ``top``, ``bottom``: ``(N, C, H, W)`` with N a multiple of ``nrow`` -> ``(2N, C, H, W)``.
    """
    n, *chw = top.shape
    pairs = torch.stack([top.view(n // nrow, nrow, *chw), bottom.view(n // nrow, nrow, *chw)], 1)
    return pairs.reshape(2 * n, *chw)  # (rows, 2, nrow, C, H, W) -> (2N, C, H, W)


def codebook_usage_plot(counts: torch.Tensor) -> torch.Tensor:
    """Bar chart of a code histogram sorted by frequency, as a ``(3, H, W)`` image tensor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    c = counts.detach().cpu().sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=80)
    ax.bar(np.arange(len(c)), c, width=1.0)
    ax.set_xlabel("code rank")
    ax.set_ylabel("count")
    ax.set_title(f"codebook usage: {(c > 0).sum()}/{len(c)} codes used")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(rgba).permute(2, 0, 1).float() / 255.0  # (H, W, 3) -> (3, H, W)


class ReconstructionGrid(pl.Callback):
    """After each validation epoch, log ``n_images`` fixed val images above their VQ-VAE
    reconstructions (``val/reconstructions``) and the code histogram (``val/code_histogram``; not
    ``val/codebook_usage``, the scalar the task logs: one W&B key cannot hold both).

    Expects the task to expose ``model`` (a VQVAE) and ``code_counts`` (see VQVAETask).
    """

    def __init__(self, n_images: int = 16, nrow: int = 8):
        if n_images < 1 or nrow < 1:
            raise ValueError(f"ReconstructionGrid needs n_images >= 1 and nrow >= 1, got {n_images} and {nrow}")
        self.n_images = n_images
        self.nrow = nrow

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before
        # the task's, which sums code_counts over DDP ranks.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not skip_rank_zero_forward(trainer, "val/reconstructions"):
            dataset = trainer.datamodule.datasets["val"]
            # Whole rows of at most n_images of those the validation set has (fewer than a row: one row).
            n = min(self.n_images, len(dataset))
            nrow = min(self.nrow, n)
            n -= n % nrow
            images = torch.stack([dataset[i]["image"] for i in range(n)]).to(pl_module.device)
            with torch.no_grad():
                recon = pl_module.model(images).recon.clamp(0, 1)
            grid = make_grid(interleave_rows(images, recon, nrow), nrow=nrow, padding=1, pad_value=0.5)
            log_image(trainer, "val/reconstructions", grid, "rows: input, reconstruction")
        log_image(trainer, "val/code_histogram", codebook_usage_plot(pl_module.code_counts))  # no model call


class SampleGrid(pl.Callback):
    """After each validation epoch, sample ``n_per_caption`` images for each fixed caption with a
    fixed seed and log one grid (``val/samples``): one row per caption, in the order given.

    Expects the task to expose ``generate(captions, n_per_caption, ...)`` and the
    ``sample_*`` hyper-parameters (see TextToImageTask).
    """

    def __init__(self, captions: Sequence[str], n_per_caption: int = 8, seed: int = 0):
        self.captions = list(captions)
        self.n_per_caption = n_per_caption
        self.seed = seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.sanity_checking or not trainer.is_global_zero or not self.captions
                or skip_rank_zero_forward(trainer, "val/samples")):
            return
        h = pl_module.hparams
        images = pl_module.generate(self.captions, self.n_per_caption, seed=self.seed,
                                    temperature=h.sample_temperature, top_k=h.sample_top_k,
                                    top_p=h.sample_top_p, cfg_scale=h.sample_cfg_scale)
        grid = make_grid(images, nrow=self.n_per_caption, padding=1, pad_value=0.5)
        log_image(trainer, "val/samples", grid, " | ".join(self.captions))
