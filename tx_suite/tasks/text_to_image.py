"""TextToImageTask: stage 2 of DALL-E on a frozen stage-1 VQ-VAE tokenizer loaded by path."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from tx_suite.data.captions_tokenizer import CaptionTokenizer
from tx_suite.decoding.sampling import check_sampling, sample_image_tokens
from tx_suite.models.text_to_image import TextToImageTransformer
from tx_suite.models.vqvae import VQVAE
from tx_suite.tasks.callbacks.generation_images import SampleGrid
from tx_suite.tasks.run_length import total_training_steps
from tx_suite.tasks.sdpa_backend import check_sdpa_backend, sdpa_backend_context
from tx_suite.tasks.vqvae import (codebook_fingerprint, load_vqvae, read_checkpoint, resolve_checkpoint, vqvae_from_state,
                                  vqvae_state)
from tx_suite.utils.checkpoint import init_kwargs, state_dict_mismatch
from tx_suite.utils.runs import CHECKPOINT_DIR

#: checkpoint key of the datamodule class the model was trained with
DATA_CLASS_KEY = "tx_suite_data_class"
#: checkpoint key of the stage-1 VQ-VAE the model was trained with (config and weights)
VQVAE_KEY = "tx_suite_vqvae"
#: TextToImageTask hyper-parameters that define the transformer.
MODEL_KEYS = ("text_vocab_size", "text_len", "d_model", "n_heads", "d_ff", "n_layers", "dropout")


class TokenizerMismatchError(ValueError):
    """The VQ-VAE given is not the one the text-to-image model was trained with."""


class TextToImageTask(pl.LightningModule):
    """Autoregressive cross-entropy over ``[text, <boi>, image tokens]``.

    Loss (Ramesh et al. 2021, Sec. 2.2): ``text_loss_weight * CE_text + image_loss_weight *
    CE_image``, each averaged over its own tokens (DALL-E: 1/8 and 7/8); padded text targets are
    ignored. Caption dropout (probability ``caption_dropout``: the caption is replaced by the
    empty, all-padding caption) trains the unconditional model that classifier-free guidance needs
    (Ho and Salimans 2022, Sec. 3.2).

    Args:
        tokenizer_ckpt: stage-1 :class:`~tx_suite.tasks.vqvae.VQVAETask` checkpoint: a file, or
            ``"<experiment>:best"`` / ``"<experiment>:last"`` for the newest such checkpoint
            under ``runs/<experiment>/``. Stored as an absolute path, and identified by its codebook
            fingerprint so a different tokenizer is refused when the model is loaded.
        text_vocab_size, text_len: caption vocabulary size (upper bound) and padded length;
            they must match the datamodule's tokenizer.
        image_size: side of the (square) images the VQ-VAE was trained on.
        d_model, n_heads, d_ff, n_layers, dropout: transformer sizes.
        text_loss_weight, image_loss_weight: loss weights.
        caption_dropout: probability of training on the empty caption.
        lr, weight_decay, warmup_steps: AdamW, linear warm-up then cosine decay.
        sdpa_backend: pin the attention kernel in training and evaluation steps (a
            ``torch.nn.attention.SDPBackend`` name in lower case: ``"math"``,
            ``"flash_attention"``, ``"efficient_attention"``, ``"cudnn_attention"``; None =
            PyTorch's choice; a CUDA-only kernel is not pinned off CUDA, with one warning). On CPU with
            ``trainer.precision: bf16-mixed`` the math kernel made a training step 1.22x as fast
            as fp32, the default kernel 0.94x (a translation step, benchmarks/RESULTS.md).
        sample_captions: captions of the per-validation sample grid (``val/samples``).
        samples_per_caption, sample_temperature, sample_top_k, sample_top_p, sample_cfg_scale:
            options of that grid's sampling.

    Logged: ``{train,val}/loss``, ``{train,val}/text_loss``, ``{train,val}/image_loss`` (nats
    per token: train values per step, the batch's mean; val/test ``text_loss`` the split's mean
    over text tokens, the others weighted by images, which for ``image_loss`` is the same, every
    image having N tokens), ``{val,test}/bits_per_image_token`` (= image CE / ln 2, without caption dropout)
    and, when batches carry a ``heldout`` flag, the same for ``_seen`` / ``_heldout`` captions
    (NaN for a subset the split does not contain, e.g. ``_heldout`` with ``eval_combos: seen``).
    """

    #: Arguments that do not shape the weights: with ``--ckpt_path`` a config file's value wins
    #: over the checkpoint's (sampling settings for ``predict``).
    RUNTIME_HPARAMS = ("sample_captions", "samples_per_caption", "sample_temperature", "sample_top_k",
                       "sample_top_p", "sample_cfg_scale", "sdpa_backend")

    def __init__(self, tokenizer_ckpt: str, text_vocab_size: int = 64, text_len: int = 16,
                 image_size: int = 32, d_model: int = 128, n_heads: int = 4, d_ff: int = 512,
                 n_layers: int = 4, dropout: float = 0.1, text_loss_weight: float = 0.125,
                 image_loss_weight: float = 0.875, caption_dropout: float = 0.1,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 200,
                 sample_captions: Sequence[str] | None = None, samples_per_caption: int = 8,
                 sample_temperature: float = 1.0, sample_top_k: int | None = None,
                 sample_top_p: float | None = None, sample_cfg_scale: float = 1.0,
                 sdpa_backend: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        check_sdpa_backend(sdpa_backend)
        # The sample grid first samples after a whole epoch: refuse its settings now, not then.
        if samples_per_caption < 1:
            raise ValueError(f"model.samples_per_caption must be >= 1, got {samples_per_caption}")
        try:
            check_sampling(sample_temperature, sample_top_k, sample_top_p, sample_cfg_scale)
        except ValueError as err:
            raise ValueError(f"model.sample_{err}") from None
        path = resolve_checkpoint(tokenizer_ckpt, kind="VQ-VAE")
        # Absolute: a relative path would only resolve from the directory training ran in.
        self.hparams["tokenizer_ckpt"] = str(Path(path).resolve())
        vqvae = load_vqvae(path)
        # A plain attribute, not a submodule: the frozen tokenizer stays out of this model's
        # state_dict, optimiser and train()/eval() switching (stage 2 loads it by path).
        object.__setattr__(self, "vqvae", vqvae)
        self.tokenizer_fingerprint = codebook_fingerprint(vqvae)
        self.model = self._build_model(vqvae)
        self.caption_tokenizer: CaptionTokenizer | None = None
        #: the datamodule class the model was trained with, as :func:`load_text_to_image` read it
        self.data_class_path: str | None = None
        self.bits = torch.nn.ModuleDict({f"{s}_{sub}": MeanMetric() for s in ("val", "test")
                                         for sub in ("all", "seen", "heldout")})

    vqvae: VQVAE

    def _build_model(self, vqvae: VQVAE) -> TextToImageTransformer:
        """The transformer for ``vqvae``'s codebook and code grid (they size its image tokens)."""
        h = self.hparams
        grid = vqvae.grid_size(h.image_size)
        return TextToImageTransformer(
            text_vocab_size=h.text_vocab_size, text_len=h.text_len, codebook_size=vqvae.codebook_size,
            grid_height=grid, grid_width=grid, d_model=h.d_model, n_heads=h.n_heads, d_ff=h.d_ff,
            n_layers=h.n_layers, dropout=h.dropout)

    # ---- setup and checkpoints -----------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self.vqvae.to(self.device)
        dm = getattr(self._trainer, "datamodule", None)  # _trainer: None outside a Trainer
        tok = getattr(dm, "tokenizer", None)
        if tok is not None:
            self.set_caption_tokenizer(tok)

    def set_caption_tokenizer(self, tok: CaptionTokenizer) -> None:
        """Attach the caption tokenizer (saved into checkpoints for ``tx-suite generate``).

        Raises:
            ValueError: its vocabulary or length does not fit the model.
        """
        h = self.hparams
        if tok.vocab_size > h.text_vocab_size or tok.max_len != h.text_len:
            raise ValueError(
                f"caption tokenizer (vocab {tok.vocab_size}, length {tok.max_len}) does not fit the "
                f"model (text_vocab_size {h.text_vocab_size}, text_len {h.text_len}); set "
                f"model.init_args.text_vocab_size >= {tok.vocab_size} and text_len = {tok.max_len}")
        self.caption_tokenizer = tok

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_fingerprint"] = self.tokenizer_fingerprint
        if self.caption_tokenizer is not None:
            checkpoint["caption_tokenizer"] = self.caption_tokenizer.to_str()
        dm = getattr(self._trainer, "datamodule", None)
        if dm is not None:  # what `generate --judge` checks the model against
            checkpoint[DATA_CLASS_KEY] = f"{type(dm).__module__}.{type(dm).__qualname__}"
        # A copy of the tokenizer (~1 MB): the stage-1 file may be trained further or replaced
        # later (its best.ckpt / last.ckpt are rewritten), and this model only fits this codebook.
        checkpoint[VQVAE_KEY] = vqvae_state(self.vqvae)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored, expected = checkpoint.get(VQVAE_KEY), checkpoint.get("tokenizer_fingerprint")
        if isinstance(stored, dict) and expected not in (None, self.tokenizer_fingerprint):
            vqvae = vqvae_from_state(stored, source="the VQ-VAE stored in the checkpoint")
            if codebook_fingerprint(vqvae) == expected:
                print(f"tx-suite: {self.hparams.tokenizer_ckpt} is not the VQ-VAE this model was trained with "
                      f"(codebook {self.tokenizer_fingerprint}, trained on {expected}; stage 1 trained further or "
                      "replaced?): using the copy stored in the checkpoint", file=sys.stderr)
                if (vqvae.codebook_size, vqvae.grid_size(self.hparams.image_size)) != (
                        self.vqvae.codebook_size, self.vqvae.grid_size(self.hparams.image_size)):
                    # The file given has another codebook size or grid: this model was sized for
                    # it, so build it again for the stored copy before its weights are loaded.
                    self.model = self._build_model(vqvae).to(self.device)
                object.__setattr__(self, "vqvae", vqvae.to(self.device))
                self.tokenizer_fingerprint = expected
        check_fingerprint(checkpoint, self.tokenizer_fingerprint, self.hparams.tokenizer_ckpt)
        if "caption_tokenizer" in checkpoint:
            self.caption_tokenizer = CaptionTokenizer.from_str(checkpoint["caption_tokenizer"],
                                                               self.hparams.text_len)
            dm = getattr(self._trainer, "datamodule", None)
            data_tok = getattr(dm, "tokenizer", None)
            # Compared after a round trip: JSON written by another `tokenizers` version may spell
            # the same model differently.
            if isinstance(data_tok, CaptionTokenizer) and data_tok.to_str() != self.caption_tokenizer.to_str():
                # The datamodule (set up before the checkpoint is read) encodes batches with its own
                # tokenizer; other data settings (an emoji BPE of another split or data.init_args.seed)
                # give other token ids, and the model would score other captions.
                print("tx-suite: the data settings give another caption tokenizer than the checkpoint's "
                      "(another split or seed?): batches are encoded with the checkpoint's", file=sys.stderr)
                dm.tokenizer = self.caption_tokenizer

    def configure_callbacks(self) -> list[pl.Callback]:
        captions = list(self.hparams.sample_captions or [])
        return [SampleGrid(captions, self.hparams.samples_per_caption)] if captions else []

    # ---- training ------------------------------------------------------------------------------

    def _losses(self, batch: dict, caption_dropout: float = 0.0):
        text = batch["text"]
        # Targets in full precision: under bf16 autocast the nearest-code search could flip codes.
        with torch.autocast(batch["image"].device.type, enabled=False):
            codes = self.vqvae.encode(batch["image"].float()).flatten(1)  # (B, h, w) -> (B, N)
        if caption_dropout > 0:
            drop = torch.rand(text.size(0), device=text.device) < caption_dropout
            text = text.masked_fill(drop[:, None], self.model.pad_id)
        with sdpa_backend_context(self.hparams.sdpa_backend, text.device):
            out = self.model(text, codes)
        targets = text[:, 1:]
        if (targets != self.model.pad_id).any():
            text_loss = F.cross_entropy(out.text_logits.float().transpose(1, 2), targets,
                                        ignore_index=self.model.pad_id)
        else:
            text_loss = out.text_logits.sum() * 0.0
        image_ce = F.cross_entropy(out.image_logits.float().transpose(1, 2), codes, reduction="none")
        return text_loss, image_ce  # scalar, (B, N)

    def _total(self, text_loss, image_loss):
        h = self.hparams
        return h.text_loss_weight * text_loss + h.image_loss_weight * image_loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        text_loss, image_ce = self._losses(batch, self.hparams.caption_dropout)
        image_loss = image_ce.mean()
        loss = self._total(text_loss, image_loss)
        n = batch["text"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/text_loss", text_loss, batch_size=n)
        self.log("train/image_loss", image_loss, batch_size=n)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        text_loss, image_ce = self._losses(batch)
        image_loss = image_ce.mean()
        n = batch["text"].size(0)
        self.log(f"{stage}/loss", self._total(text_loss, image_loss), prog_bar=True, batch_size=n,
                 sync_dist=True)
        # Weighted by text tokens, so that the epoch value is the split's mean per token (as
        # promised), not a mean of batch means weighted by images.
        tokens = max(int((batch["text"][:, 1:] != self.model.pad_id).sum()), 1)
        self.log(f"{stage}/text_loss", text_loss, batch_size=tokens, sync_dist=True)
        self.log(f"{stage}/image_loss", image_loss, batch_size=n, sync_dist=True)
        bits = image_ce.mean(1) / math.log(2)  # (B,) bits per image token of each image
        subsets = {"all": torch.ones_like(bits, dtype=torch.bool)}
        if "heldout" in batch:
            subsets.update(seen=~batch["heldout"], heldout=batch["heldout"])
        # Every key on every step, an empty subset included: under DDP a metric is synced by a
        # collective all ranks must join, and a rank whose shard had no held-out image never
        # logged that key, so the ranks' gathers paired up wrongly (a rank died, values were off).
        for sub, mask in subsets.items():
            metric = self.bits[f"{stage}_{sub}"]
            metric.update(bits[mask])
            suffix = "" if sub == "all" else f"_{sub}"
            self.log(f"{stage}/bits_per_image_token{suffix}", metric, batch_size=max(int(mask.sum()), 1),
                     prog_bar=sub == "all")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One image per caption of the batch, sampled with the ``sample_*`` options:
        ``{"image": (B, 3, H, W) in [0, 1], "caption": list[str]}``.

        Reproducible: the image of the caption at test-set ``index`` is drawn with seed
        ``row_seed(0, index)``, the same on one process or N (a batch without ``index``, from
        another datamodule, falls back to seed ``batch_idx``, which DDP ranks share).
        """
        hp = self.hparams
        index = batch.get("index")
        images = self.generate(batch["caption"], temperature=hp.sample_temperature,
                               top_k=hp.sample_top_k, top_p=hp.sample_top_p, cfg_scale=hp.sample_cfg_scale,
                               seed=0 if index is not None else batch_idx,
                               rows=index.tolist() if index is not None else None)
        return {"image": images, "caption": list(batch["caption"])}

    def configure_optimizers(self):
        h = self.hparams
        # Weight decay on matrices of linear layers only, not on embeddings, positions, <boi>,
        # biases or norms (as GPT-2/minGPT).
        def decays(name: str, p: torch.nn.Parameter) -> bool:
            return p.dim() >= 2 and not any(s in name for s in ("embedding", "pos", "boi"))

        params = list(self.model.named_parameters())
        decay = [p for n, p in params if decays(n, p)]
        no_decay = [p for n, p in params if not decays(n, p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=(0.9, 0.95))
        total = max(total_training_steps(self.trainer, "cosine"), h.warmup_steps + 1)

        def schedule(step: int) -> float:
            # Linear warm-up, then cosine decay to 10% (as GPT-3, Brown et al. 2020, App. B).
            if step < h.warmup_steps:
                return (step + 1) / h.warmup_steps
            t = (step - h.warmup_steps) / max(total - h.warmup_steps, 1)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- generation ----------------------------------------------------------------------------

    def null_text(self) -> torch.Tensor:
        """The empty caption ``(L,)`` (all padding) that caption dropout trained on."""
        return torch.full((self.hparams.text_len,), self.model.pad_id, dtype=torch.long,
                          device=self.device)

    @torch.no_grad()
    def generate(self, captions: Sequence[str], n_per_caption: int = 1, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 cfg_scale: float = 1.0, use_cache: bool = True, seed: int | None = 0,
                 batch_size: int = 64, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Images for ``captions``: ``(len(captions) * n_per_caption, 3, H, W)`` in [0, 1],
        the ``n_per_caption`` images of caption ``i`` at rows ``i * n .. (i + 1) * n - 1``.

        Image ``row`` is drawn with its own generator seeded :func:`row_seed` ``(seed, row)``, so
        the same seed gives the same image for the same caption at the same row, whatever
        ``batch_size`` and the captions after it (``seed=None``: the global RNG). ``rows`` replaces
        the row numbers ``0 .. N-1`` the seeds are taken from (``predict`` passes test-set indices).

        Raises:
            RuntimeError: no caption tokenizer attached (train with a datamodule first).
            ValueError: ``rows`` does not give one number per image.
        """
        if self.caption_tokenizer is None:
            raise RuntimeError("no caption tokenizer: load a checkpoint saved by training, or "
                               "call set_caption_tokenizer()")
        if rows is not None and len(rows) != len(captions) * n_per_caption:
            raise ValueError(f"rows gives {len(rows)} seed rows for {len(captions) * n_per_caption} images")
        was_training = self.model.training
        self.model.eval()
        text = self.caption_tokenizer.encode(list(captions)).to(self.device)
        text = text.repeat_interleave(n_per_caption, dim=0)  # (C, L) -> (C * n, L)
        # One generator per image, seeded from (seed, row): an image does not change with
        # batch_size or with the captions after it.
        rows = range(len(text)) if rows is None else rows
        gens = ([torch.Generator(device=self.device).manual_seed(row_seed(seed, r)) for r in rows]
                if seed is not None else None)
        images = []
        for start in range(0, len(text), batch_size):
            chunk = text[start:start + batch_size]
            codes = sample_image_tokens(self.model, chunk, temperature=temperature, top_k=top_k,
                                        top_p=top_p, cfg_scale=cfg_scale, null_text=self.null_text(),
                                        use_cache=use_cache,
                                        generator=gens[start:start + batch_size] if gens else None)
            h, w = self.model.grid
            images.append(self.vqvae.decode(codes.view(-1, h, w)))  # (b, N) -> (b, h, w)
        self.model.train(was_training)
        return torch.cat(images)


def row_seed(seed: int, row: int) -> int:
    """The seed of image ``row`` of a ``generate(..., seed=seed)`` call: distinct for every
    (seed, row) below a million rows, so seed 1 is not seed 0 shifted by one image."""
    return (seed * 1_000_003 + row) % 2**63


def check_fingerprint(checkpoint: dict, fingerprint: str, tokenizer_path: str) -> None:
    """Raise :class:`TokenizerMismatchError` when ``checkpoint`` was trained on another codebook."""
    expected = checkpoint.get("tokenizer_fingerprint")
    if expected is not None and expected != fingerprint:
        raise TokenizerMismatchError(
            f"tokenizer checkpoint {tokenizer_path} (codebook {fingerprint}) is not the VQ-VAE this "
            f"model was trained with (codebook {expected}); pass the matching stage-1 checkpoint")


def _relocated_tokenizer(recorded: str, stage2: Path) -> str:
    """The recorded stage-1 path, or its run under the stage-2 checkpoint's runs root when the
    recorded one is gone: a runs/ directory moved or copied whole, or a path recorded relative to
    another working directory. The codebook fingerprint still checks that it is the same VQ-VAE."""
    rec, s2 = Path(recorded), stage2.resolve()
    # (a stage-2 file in a shallow checkpoints/ folder, e.g. /data/checkpoints/, has no runs root)
    if (rec.is_file() or len(rec.parts) < 4 or rec.parent.name != CHECKPOINT_DIR
            or s2.parent.name != CHECKPOINT_DIR or len(s2.parents) < 4):
        return recorded
    candidate = s2.parents[3] / Path(*rec.parts[-4:])  # <runs>/<experiment>/<run_id>/checkpoints/<file>
    return str(candidate) if candidate.is_file() else recorded


def load_text_to_image(path: str | Path, tokenizer_ckpt: str | None = None,
                       map_location: str | torch.device = "cpu") -> TextToImageTask:
    """A trained :class:`TextToImageTask` in eval mode, with its VQ-VAE and caption tokenizer.

    Args:
        path: the stage-2 checkpoint.
        tokenizer_ckpt: the stage-1 checkpoint; default: the path recorded at training time or,
            when that file is gone, the same run under the stage-2 checkpoint's runs directory,
            else the copy of the VQ-VAE stored in the checkpoint. A file with another codebook is
            replaced by that copy, with a line on stderr.

    Raises:
        FileNotFoundError: a checkpoint is missing (the message says which).
        TokenizerMismatchError: ``tokenizer_ckpt`` is not the VQ-VAE the model was trained with
            and the checkpoint holds no copy of it (written before 2026-12-03).
        ValueError: not a text-to-image checkpoint, or one without a caption tokenizer.
    """
    ckpt = read_checkpoint(path, "text-to-image", required=("tokenizer_ckpt", *MODEL_KEYS),
                           map_location=map_location)
    hparams = init_kwargs(ckpt["hyper_parameters"])
    if tokenizer_ckpt is not None:
        hparams["tokenizer_ckpt"] = tokenizer_ckpt
    else:
        hparams["tokenizer_ckpt"] = _relocated_tokenizer(hparams["tokenizer_ckpt"], Path(path))
    if "caption_tokenizer" not in ckpt:
        raise ValueError(f"{path} has no caption tokenizer (it was saved without a datamodule)")
    stored = ckpt.get(VQVAE_KEY)
    recorded = hparams["tokenizer_ckpt"]
    try:
        if tokenizer_ckpt is None and isinstance(stored, dict) and not Path(recorded).is_file():
            # The stage-1 file is gone: the copy in this checkpoint, through a temporary file in
            # the stage-1 checkpoint format (the task builds its shapes from a file).
            print(f"tx-suite: {recorded} is gone; using the VQ-VAE stored in {path}", file=sys.stderr)
            with tempfile.TemporaryDirectory() as tmp:
                hparams["tokenizer_ckpt"] = str(Path(tmp) / "vqvae.ckpt")
                torch.save({"hyper_parameters": dict(stored["config"]), "state_dict":
                            {f"model.{k}": v for k, v in stored["state_dict"].items()}}, hparams["tokenizer_ckpt"])
                task = TextToImageTask(**hparams)
            task.hparams["tokenizer_ckpt"] = recorded
        else:
            task = TextToImageTask(**hparams)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (needed by {path}; pass the stage-1 checkpoint "
                                "explicitly, e.g. --tokenizer PATH)") from None
    task.on_load_checkpoint(ckpt)
    data_hparams = ckpt.get("datamodule_hyper_parameters")
    task.data_class_path = ckpt.get(DATA_CLASS_KEY) or (
        data_hparams.get("_class_path") if isinstance(data_hparams, dict) else None)
    try:
        task.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise TokenizerMismatchError(f"{path} does not fit tokenizer {hparams['tokenizer_ckpt']}: "
                                     f"{state_dict_mismatch(err)}") from None
    return task.eval()
