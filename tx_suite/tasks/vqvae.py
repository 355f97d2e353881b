"""VQVAETask: trains the stage-1 image tokenizer; ``load_vqvae`` gives it to stage 2 by path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio

from tx_suite.models.vqvae import VQVAE
from tx_suite.tasks import epoch_tallies
from tx_suite.tasks.callbacks.generation_images import ReconstructionGrid
from tx_suite.tasks.one_cycle import one_cycle
from tx_suite.tasks.run_length import total_training_steps
from tx_suite.utils.checkpoint import state_dict_mismatch
from tx_suite.utils.runs import resolve_checkpoint as _resolve_checkpoint

#: VQVAETask hyper-parameters that define the model (all of its __init__ but the optimiser's).
MODEL_KEYS = ("hidden", "res_channels", "n_res_blocks", "downsample", "codebook_size",
              "codebook_dim", "decay", "commitment_weight", "kmeans_init",
              "threshold_ema_dead_code", "rotation_trick")
#: checkpoint key of the training code histogram of the epoch in progress (mid-epoch checkpoints)
TRAIN_COUNTS_KEY = "tx_suite_train_code_counts"


class VQVAETask(pl.LightningModule):
    """Reconstruction (MSE on [0, 1] pixels) plus commitment loss (van den Oord et al. 2017, Eq. 3
    with the EMA codebook update of Sec. A.1 replacing the codebook term).

    Args: the :class:`~tx_suite.models.vqvae.VQVAE` arguments, plus ``lr`` and ``weight_decay``
    of AdamW with a one-cycle schedule (:func:`~tx_suite.tasks.one_cycle.one_cycle`), and
    ``log_images``: how many val images (with their reconstructions)
    :class:`~tx_suite.tasks.callbacks.generation_images.ReconstructionGrid` logs after each
    validation epoch (0 = none).

    Logged: ``train/loss``, ``train/recon_loss``, ``train/commit_loss``, ``val/recon_loss``,
    ``val/psnr`` (dB, 10 log10(1 / MSE) over the epoch), ``{train,val}/codebook_usage`` (fraction
    of the K codes used at least once in the epoch) and ``{train,val}/codebook_perplexity``
    (``exp(H(p))`` of the epoch's code histogram, from 1 up to K; Razavi et al. 2019).
    ``code_counts`` holds the last validation epoch's histogram (summed over DDP ranks) for the
    image callbacks.
    """

    #: Arguments that do not shape the weights: with ``--ckpt_path`` a config file's value wins.
    RUNTIME_HPARAMS = ("log_images",)

    def __init__(self, hidden: int = 64, res_channels: int = 32, n_res_blocks: int = 2,
                 downsample: int = 4, codebook_size: int = 512, codebook_dim: int = 32,
                 decay: float = 0.99, commitment_weight: float = 0.25, kmeans_init: bool = True,
                 threshold_ema_dead_code: float = 2.0, rotation_trick: bool = True,
                 lr: float = 2e-3, weight_decay: float = 0.0, log_images: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.model = VQVAE(**{k: self.hparams[k] for k in MODEL_KEYS})
        self.psnr = {s: PeakSignalNoiseRatio(data_range=1.0) for s in ("val", "test")}
        for s, m in self.psnr.items():
            self.add_module(f"{s}_psnr", m)
        K = codebook_size
        self.register_buffer("code_counts", torch.zeros(K, dtype=torch.long), persistent=False)
        self.register_buffer("train_code_counts", torch.zeros(K, dtype=torch.long), persistent=False)
        self._resumed_counts = None  # TRAIN_COUNTS_KEY of the checkpoint fit resumes

    def configure_callbacks(self) -> list[pl.Callback]:
        # Registered here rather than in the config: it belongs to every VQ-VAE run, whatever
        # callbacks list an experiment config states.
        if self.hparams.log_images <= 0:
            return []
        return [ReconstructionGrid(n_images=self.hparams.log_images)]

    def configure_model(self) -> None:
        # Lightning calls this after the process group is up (DDP), before the optimizer exists.
        self.model.enable_codebook_sync()

    def forward(self, images: torch.Tensor):
        return self.model(images)

    @staticmethod
    def usage_stats(counts: torch.Tensor) -> tuple[float, float]:
        """``(fraction of codes used, perplexity exp(-sum p log p))`` of a code histogram."""
        p = counts.double() / counts.sum().clamp(min=1)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return float((counts > 0).float().mean()), float(entropy.exp())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        out = self(images)
        recon_loss = F.mse_loss(out.recon, images)
        loss = recon_loss + out.commit_loss
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/recon_loss", recon_loss, batch_size=n)
        self.log("train/commit_loss", out.commit_loss, batch_size=n)
        self.train_code_counts += torch.bincount(out.codes.flatten(), minlength=len(self.code_counts))
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The train/codebook_* metrics are over the whole epoch: a run resumed mid-epoch continues
        # its histogram (epoch_tallies) instead of counting only the batches after the resume.
        tallies = epoch_tallies.pack(self._trainer, {"counts": self.train_code_counts})
        if tallies is not None:
            checkpoint[TRAIN_COUNTS_KEY] = tallies

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_counts = checkpoint.get(TRAIN_COUNTS_KEY)

    def on_train_start(self) -> None:
        # Lightning does not call on_train_epoch_start for an epoch it resumes mid-way.
        state = epoch_tallies.unpack(self._resumed_counts, self.trainer)
        self._resumed_counts = None
        counts = None if state is None else state.get("counts")
        if torch.is_tensor(counts) and counts.shape == self.train_code_counts.shape:
            self.train_code_counts.copy_(counts)

    def on_train_epoch_start(self) -> None:
        self.train_code_counts.zero_()

    def on_train_epoch_end(self) -> None:
        usage, perplexity = self.usage_stats(self._all_ranks(self.train_code_counts))
        self.log("train/codebook_usage", usage)
        self.log("train/codebook_perplexity", perplexity)

    def _eval_step(self, batch: dict, stage: str) -> None:
        images = batch["image"]
        out = self(images)
        n = len(images)
        self.log(f"{stage}/recon_loss", F.mse_loss(out.recon, images), prog_bar=True, batch_size=n,
                 sync_dist=True)
        self.psnr[stage].update(out.recon.clamp(0, 1), images)
        self.log(f"{stage}/psnr", self.psnr[stage], prog_bar=True, batch_size=n)
        self.code_counts += torch.bincount(out.codes.flatten(), minlength=len(self.code_counts))

    def on_validation_epoch_start(self) -> None:
        self.code_counts.zero_()

    on_test_epoch_start = on_validation_epoch_start

    def _all_ranks(self, counts: torch.Tensor) -> torch.Tensor:
        # Under DDP each rank saw its shard; the usage of the epoch is the sum.
        return self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")

    def _log_usage(self, stage: str) -> None:
        # Kept summed: ReconstructionGrid draws the histogram after this hook (on_validation_end).
        self.code_counts.copy_(self._all_ranks(self.code_counts))
        usage, perplexity = self.usage_stats(self.code_counts)
        self.log(f"{stage}/codebook_usage", usage)
        self.log(f"{stage}/codebook_perplexity", perplexity)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Tokenize and reconstruct: ``codes`` ``(B, h, w)`` long and ``image`` ``(B, C, H, W)``
        in [0, 1] (written by PredictionWriter as ``predictions.pt`` and PNGs)."""
        out = self(batch["image"])
        return {"image": out.recon.clamp(0, 1), "codes": out.codes}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        sched = one_cycle(opt, self.hparams.lr, total_training_steps(self.trainer, "one-cycle"), pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def resolve_checkpoint(spec: str | Path, runs_dir: str | Path | None = None, kind: str = "") -> Path:
    """:func:`tx_suite.utils.runs.resolve_checkpoint` with a hint to train the generation
    experiment of that name (``experiments/generation/<name>.yaml``)."""
    return _resolve_checkpoint(spec, runs_dir, kind,
                               hint="train it first: tx-suite fit --config experiments/generation/{name}.yaml")


def read_checkpoint(path: str | Path, kind: str, required: Sequence[str],
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` and check that it is a ``kind`` one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, or lacking ``state_dict`` / the ``required`` hyper-parameters
            (the message names the file and what it expected).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: {path}")
    from tx_suite.utils.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location=map_location)  # weights_only, with a one-line reason
    except CheckpointError as err:
        raise ValueError(f"cannot read {kind} checkpoint: {err}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict/hyper_parameters)")
    missing = [k for k in required if k not in hparams]
    if missing:
        raise ValueError(f"{path} is not a {kind} checkpoint: hyper-parameters {missing} missing")
    return ckpt


def codebook_fingerprint(model: VQVAE) -> str:
    """SHA-256 (first 16 hex digits) of the codebook: identifies the exact tokenizer a stage-2
    model was trained with, so that a different one is refused instead of decoding garbage."""
    codebook = model.quantizer.codebook.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(codebook.numpy().tobytes()).hexdigest()[:16]


def load_vqvae(path: str | Path, map_location: str | torch.device = "cpu") -> VQVAE:
    """The :class:`VQVAE` of a :class:`VQVAETask` checkpoint, frozen and in eval mode.

    Raises:
        FileNotFoundError: no file. ValueError: not a VQ-VAE checkpoint (see read_checkpoint).
    """
    ckpt = read_checkpoint(path, "VQ-VAE", required=MODEL_KEYS, map_location=map_location)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("model.")}
    return vqvae_from_state({"config": {k: ckpt["hyper_parameters"][k] for k in MODEL_KEYS}, "state_dict": state},
                            source=f"VQ-VAE checkpoint {path}")


def vqvae_state(model: VQVAE) -> dict:
    """``{"config", "state_dict"}`` of a VQ-VAE :func:`load_vqvae` made: what a stage-2 checkpoint
    keeps of its tokenizer (:func:`vqvae_from_state` rebuilds it)."""
    return {"config": dict(model.tx_config), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def vqvae_from_state(state: dict, source: str = "stored VQ-VAE") -> VQVAE:
    """The frozen, eval-mode :class:`VQVAE` of :func:`vqvae_state`'s dict.

    Raises:
        ValueError: the weights do not fit the config (``source`` names where they came from).
    """
    model = VQVAE(**state["config"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        # (the first line alone is torch's header, "Error(s) in loading state_dict for VQVAE:")
        raise ValueError(f"{source} does not match its hyper-parameters: {state_dict_mismatch(err)}") from None
    model.tx_config = dict(state["config"])  # for vqvae_state
    return model.eval().requires_grad_(False)
