"""Lightning task for sequence-to-sequence translation (Vaswani et al. 2017 recipe)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from tx_suite.data.bpe import BOS_ID, DECODER_STARTS, EOS_ID, PAD_ID, BPETokenizer
from tx_suite.data.text_normalize import one_line
from tx_suite.decoding.beam_search import beam_search
from tx_suite.decoding.greedy import greedy_search
from tx_suite.models.seq2seq import Seq2SeqTransformer
from tx_suite.tasks.callbacks.due import validation_due
from tx_suite.tasks.run_length import total_training_steps
from tx_suite.tasks.sdpa_backend import check_sdpa_backend, sdpa_backend_context
from tx_suite.tasks.translation_loss import linear_label_smoothed_nll_loss
from tx_suite.tasks.translation_metrics import signatures, translation_scores
from tx_suite.tasks.translation_schedules import build_scheduler, upgrade_scheduler_state


def check_decoding(**settings: float) -> None:
    """Refuse decoding settings that would only fail (or decode nothing) at the first validation.

    Raises:
        ValueError: a beam size, ``bleu_every_n_epochs`` < 1, ``n_samples`` < 0, or a
            ``length_penalty`` / ``max_len_a`` / ``max_len_b`` that is not finite (``max_len_a`` < 0).
    """
    for name, value in settings.items():
        minimum = {"val_beam_size": 1, "beam_size": 1, "bleu_every_n_epochs": 1, "n_samples": 0,
                   "max_len_a": 0}.get(name)
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            bound = f" >= {minimum}" if minimum is not None else ""
            raise ValueError(f"model.{name} must be a finite number{bound}, got {value}")


class TranslationTask(pl.LightningModule):
    """Train and evaluate a :class:`Seq2SeqTransformer` on a translation datamodule.

    The datamodule must expose ``tokenizer`` (:class:`tx_suite.data.bpe.BPETokenizer`) and yield
    the batches of :mod:`tx_suite.data.translation_dataset`. The tokenizer is stored in every
    checkpoint, so a checkpoint alone is enough to translate (``tx-suite translate``).

    Logged metrics: ``train/loss`` (label-smoothed, per token), ``train/nll`` (under DDP both rank
    0's, as Lightning logs steps), ``train/tokens_per_s`` (source + target tokens without padding,
    summed over the ranks);
    ``{val,test}/loss``, ``/nll``, ``/ppl``, ``/bleu`` (case-sensitive sacreBLEU), ``/bleu_lc``,
    ``/chrf``, ``/sent_per_s`` (decoding speed). Test hypotheses are written to
    ``<run dir>/test_hypotheses.txt`` in corpus order (a line per sentence of the split; with
    ``limit_test_batches`` the sentences not decoded are empty lines).

    Args:
        vocab_size ... tie_output, pos_encoding, cross_attn_init: the model (see
            :class:`Seq2SeqTransformer`); the last two reproduce fairseq's sinusoids and
            initialisation (``multi30k_en_de_tiny_fairseq_lc_model.yaml``).
        decoder_start: the decoder's first input in training and decoding: ``"bos"`` (``<s>``)
            or ``"eos"`` (``</s>``, as fairseq's ``prev_output_tokens``). The datamodule's
            ``tgt_in`` starts with BOS either way; the task swaps it.
        label_smoothing: epsilon of :func:`label_smoothed_nll_loss`.
        lr: peak learning rate of Adam (Kingma & Ba 2015); ``beta1``, ``beta2`` (0.98 as §5.3),
            ``adam_eps``; ``weight_decay`` > 0 switches to AdamW (Loshchilov & Hutter 2019).
        lr_schedule, warmup_steps, min_lr_ratio: see
            :func:`tx_suite.tasks.translation_schedules.build_scheduler`.
        val_beam_size: beam used for validation BLEU (1 = greedy, fast).
        beam_size, length_penalty: test/predict decoding (see
            :func:`tx_suite.decoding.beam_search.beam_search`).
        max_len_a, max_len_b: output budget ``a * source_length + b`` tokens.
        bleu_every_n_epochs: decode the validation set every n epochs and in the last epoch (by
            ``max_epochs`` or ``max_steps``); the loss every epoch. Epochs without BLEU leave
            ``best.ckpt`` (monitor ``val/bleu``) as it is. ``validate`` (outside fit) always decodes.
        n_samples: sample translations kept for the sample callback.
        sdpa_backend: pin the attention kernel for training, evaluation and decoding (``"math"``,
            ``"flash"``, ``"efficient"``, ``"cudnn"``; ``None`` = PyTorch's choice; a CUDA-only
            kernel is not pinned off CUDA, with one warning). On CPU with
            ``trainer.precision: bf16-mixed``, ``"math"`` makes a Transformer-tiny training step
            ~1.2x faster than fp32, where the default kernel under bf16 gains nothing
            (``benchmarks/RESULTS.md``).

    Raises:
        ValueError: the datamodule's vocabulary does not fit ``vocab_size``, its BPE model or
            language pair differs from the checkpoint's, ``sdpa_backend`` is unknown, or a
            decoding setting is out of range (see :func:`check_decoding`).
    """

    #: Arguments that do not shape the weights: with ``--ckpt_path`` a config file's value wins
    #: over the checkpoint's (``tx-suite test --config beam1.yaml --ckpt_path best``).
    RUNTIME_HPARAMS = ("val_beam_size", "beam_size", "length_penalty", "max_len_a", "max_len_b",
                       "bleu_every_n_epochs", "n_samples", "sdpa_backend")

    def __init__(self, vocab_size: int = 8000, d_model: int = 256, n_heads: int = 4, d_ff: int = 1024,
                 n_encoder_layers: int = 3, n_decoder_layers: int = 3, dropout: float = 0.1,
                 attn_dropout: float = 0.0, activation_dropout: float | None = None,
                 activation: str = "relu", norm_first: bool = False, share_embeddings: bool = True,
                 tie_output: bool = True, label_smoothing: float = 0.1,
                 lr: float = 5e-4, beta1: float = 0.9, beta2: float = 0.98, adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, lr_schedule: str = "inverse_sqrt", warmup_steps: int = 4000,
                 min_lr_ratio: float = 0.0, val_beam_size: int = 1, beam_size: int = 5,
                 length_penalty: float = 1.0, max_len_a: float = 1.2, max_len_b: int = 10,
                 bleu_every_n_epochs: int = 1, n_samples: int = 8, sdpa_backend: str | None = None,
                 pos_encoding: str = "sinusoidal", cross_attn_init: str = "split", decoder_start: str = "bos"):
        super().__init__()
        check_sdpa_backend(sdpa_backend)
        if decoder_start not in DECODER_STARTS:
            raise ValueError(f"model.decoder_start must be one of {tuple(DECODER_STARTS)}, got {decoder_start!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        check_decoding(val_beam_size=val_beam_size, beam_size=beam_size, length_penalty=length_penalty,
                       max_len_a=max_len_a, max_len_b=max_len_b, bleu_every_n_epochs=bleu_every_n_epochs,
                       n_samples=n_samples)
        self.save_hyperparameters()
        self.model = Seq2SeqTransformer(
            vocab_size, d_model=d_model, n_heads=n_heads, d_ff=d_ff, n_encoder_layers=n_encoder_layers,
            n_decoder_layers=n_decoder_layers, dropout=dropout, attn_dropout=attn_dropout,
            activation_dropout=activation_dropout, activation=activation, norm_first=norm_first,
            pad_id=PAD_ID, share_embeddings=share_embeddings, tie_output=tie_output,
            pos_encoding=pos_encoding, cross_attn_init=cross_attn_init)
        self.tokenizer: BPETokenizer | None = None
        self.val_samples: list[dict] = []
        self._eval: dict = {}
        self._t_batch: float | None = None
        self._n_prev = 0
        self._last_rows: list[dict] = []
        self._trained_data: dict = {}  # the checkpoint's data settings, once one is loaded

    # ------------------------------------------------------------------ tokenizer plumbing
    def _adopt_tokenizer(self, tok: BPETokenizer, source: str) -> None:
        if self.tokenizer is not None and not self.tokenizer.same_as(tok):
            raise ValueError(f"the BPE model of the {source} differs from the checkpoint's; use the data "
                             "settings (vocab_size, min_frequency, train split, languages) of the training run")
        if tok.vocab_size > self.hparams.vocab_size:
            raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is "
                             f"{self.hparams.vocab_size}; set model.vocab_size >= data.vocab_size")
        self.tokenizer = tok

    def setup(self, stage: str) -> None:
        tok = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tok is not None:
            self._adopt_tokenizer(tok, "datamodule")
        if self.tokenizer is None:
            raise ValueError("TranslationTask needs a datamodule with a `tokenizer` (e.g. Multi30kDataModule)")
        self._check_direction(self._trained_data)  # loaded by load_from_checkpoint, before any trainer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before it restores the schedulers: older cosine states are upgraded here.
        if checkpoint.get("lr_schedulers"):
            checkpoint["lr_schedulers"] = [upgrade_scheduler_state(s) for s in checkpoint["lr_schedulers"]]
        if "tokenizer" in checkpoint:
            self._adopt_tokenizer(BPETokenizer.from_str(checkpoint["tokenizer"]), "datamodule")
        self._trained_data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        self._check_direction(self._trained_data)

    def _check_direction(self, stored: dict) -> None:
        # The joint BPE is the same in both directions, so the tokenizer check cannot see a de->en
        # model tested on en->de data: it would score BLEU ~0 with exit status 0.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        now = getattr(datamodule, "hparams", None) or {}
        for key in ("src_lang", "tgt_lang", "lowercase"):
            if key in stored and key in now and stored[key] != now[key]:
                raise ValueError(
                    f"the checkpoint was trained with data.{key}={stored[key]!r}, the datamodule has "
                    f"{now[key]!r}; use the data settings of the training run"
                )

    # ------------------------------------------------------------------ training
    def forward(self, src: Tensor, tgt_in: Tensor, src_key_padding_mask: Tensor) -> Tensor:
        return self.model(src, tgt_in, src_key_padding_mask)

    @property
    def start_id(self) -> int:
        """Id of the decoder's first input (``decoder_start``)."""
        return DECODER_STARTS[self.hparams.get("decoder_start", "bos")]

    def _decoder_input(self, tgt_in: Tensor) -> Tensor:
        """The batch's ``tgt_in`` ``(B, T)`` (BOS-prefixed by the datamodule) with ``start_id`` first."""
        if self.start_id == BOS_ID:
            return tgt_in
        return torch.cat([torch.full_like(tgt_in[:, :1], self.start_id), tgt_in[:, 1:]], dim=1)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor, int]:
        with sdpa_backend_context(self.hparams.sdpa_backend, batch["src"].device):
            h = self.model.forward_features(batch["src"], self._decoder_input(batch["tgt_in"]),
                                            batch["src_key_padding_mask"])
        keep = batch["tgt_out"] != PAD_ID
        # Only the real target positions, (B, T, D) -> (N, D), projected and scored chunk by chunk:
        # the (N, V) logits are never built whole.
        return linear_label_smoothed_nll_loss(h[keep], self.model.lm_head.weight, batch["tgt_out"][keep],
                                              self.hparams.label_smoothing)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._t_batch = time.perf_counter()
        # Source + target tokens, padding excluded: what the model actually reads.
        self._n_prev = int((~batch["src_key_padding_mask"]).sum() + (~batch["tgt_key_padding_mask"]).sum())

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        # From the batch's start to the end of its optimizer step: measuring from one batch start
        # to the next would put an epoch's validation into the first batch after it.
        if self._t_batch is not None and self._n_prev:
            # Summed over DDP ranks: the throughput of the whole job, not of rank 0.
            self.log("train/tokens_per_s", self._n_prev / (time.perf_counter() - self._t_batch), batch_size=1,
                     sync_dist=True, reduce_fx="sum")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss_sum, nll_sum, n = self._loss(batch)
        loss = loss_sum / n
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/nll", nll_sum / n, batch_size=n)
        return loss * self._token_share(n, loss.device)

    def _token_share(self, n: int, device: torch.device) -> float | Tensor:
        """``W * n / N`` under data parallelism (``W`` ranks, ``N`` tokens over all of them), else 1.

        DDP averages the ranks' gradients; scaling each rank's per-token mean by this makes that
        average the gradient of the loss summed over every rank's tokens divided by ``N``, the
        normalisation of one process on the whole batch (and of fairseq). Without it a rank with a
        short batch gives each of its tokens more weight.
        """
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        if world <= 1:
            return 1.0
        total = trainer.strategy.reduce(torch.tensor(float(n), device=device), reduce_op="sum")
        return world * n / total

    def configure_optimizers(self):
        h = self.hparams
        opt_cls = torch.optim.AdamW if h.weight_decay > 0 else torch.optim.Adam
        opt = opt_cls(self.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), eps=h.adam_eps,
                      weight_decay=h.weight_decay)
        # inverse_sqrt and constant never reach an end: a run stopped by max_time alone is fine
        total = total_training_steps(self.trainer, h.lr_schedule) if h.lr_schedule == "cosine" else 0
        sched = build_scheduler(opt, h.lr_schedule, h.warmup_steps, total, h.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, src: Tensor, src_key_padding_mask: Tensor, beam_size: int | None = None,
                 length_penalty: float | None = None, use_cache: bool = True) -> Tensor:
        """Output ids ``(B, T)`` (ending with EOS, right-padded) for a source batch ``(B, S)``."""
        h = self.hparams
        beam = h.beam_size if beam_size is None else beam_size
        kw = dict(bos_id=self.start_id, eos_id=EOS_ID, pad_id=PAD_ID, max_len_a=h.max_len_a, max_len_b=h.max_len_b,
                  use_cache=use_cache)
        with sdpa_backend_context(h.sdpa_backend, src.device):
            if beam == 1:
                return greedy_search(self.model, src, src_key_padding_mask, **kw)
            lp = h.length_penalty if length_penalty is None else length_penalty
            return beam_search(self.model, src, src_key_padding_mask, beam_size=beam, length_penalty=lp, **kw)

    def translate(self, batch: dict, beam_size: int | None = None) -> list[str]:
        """Detokenized hypotheses for a batch, one line each (a decoded line break, possible with
        byte fallback, becomes a space: hypothesis files hold one sentence per line)."""
        hyps = self.tokenizer.decode_batch(self.generate(batch["src"], batch["src_key_padding_mask"], beam_size))
        return [one_line(h) for h in hyps]

    # ------------------------------------------------------------------ evaluation
    def _decode_now(self, stage: str) -> bool:
        # bleu_every_n_epochs thins out validation during fit; `validate` asks for the scores now.
        return stage == "test" or validation_due(self.trainer, self.hparams.bleu_every_n_epochs)

    def _eval_start(self) -> None:
        self._eval = {"batches": [], "rows": [], "decode_s": 0.0}

    def _eval_step(self, batch: dict, stage: str) -> None:
        loss_sum, nll_sum, n = self._loss(batch)
        # Keyed by the batch's sentence indices: under DDP the sampler pads the ranks' shards with
        # repeated batches, which _gather_eval counts once.
        self._eval["batches"].append((tuple(batch["index"].tolist()), float(loss_sum), float(nll_sum), n))
        if self._decode_now(stage):
            beam = self.hparams.beam_size if stage == "test" else self.hparams.val_beam_size
            t0 = time.perf_counter()
            hyps = self.translate(batch, beam)
            self._eval["decode_s"] += time.perf_counter() - t0
            self._eval["rows"] += [
                {"index": int(i), "source": s, "reference": r, "hypothesis": h}
                for i, s, r, h in zip(batch["index"].tolist(), batch["src_text"], batch["tgt_text"], hyps)]

    def _gather_eval(self) -> tuple[list[tuple], list[dict], float]:
        """This epoch's (batches, rows, decoding seconds) of every data-parallel rank, each batch
        and sentence once; the seconds are the slowest rank's (the ranks decode in parallel)."""
        e = self._eval
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return e["batches"], e["rows"], e["decode_s"]
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (e["batches"], e["rows"], e["decode_s"]))
        batches = list({b[0]: b for p in parts for b in p[0]}.values())
        rows = list({r["index"]: r for p in parts for r in p[1]}.values())
        return batches, rows, max(p[2] for p in parts)

    def _eval_end(self, stage: str) -> dict[str, float]:
        """Corpus-level scores of the whole split. Under DDP each rank evaluated a shard of the
        batches (:class:`~tx_suite.data.multi30k_datamodule.Multi30kDataModule`); the shards are
        gathered first, so every rank logs the same values, those of one process."""
        if not getattr(self, "_eval", None):
            return {}
        batches, rows, decode_s = self._gather_eval()
        n = sum(b[3] for b in batches)
        if n == 0:
            return {}
        out = {"loss": sum(b[1] for b in batches) / n, "nll": sum(b[2] for b in batches) / n}
        out["ppl"] = math.exp(min(out["nll"], 50.0))
        rows = sorted(rows, key=lambda r: r["index"])
        # Empty in an epoch that decodes nothing (bleu_every_n_epochs): the last decoded samples
        # must not be logged again under this epoch.
        self.val_samples = rows[: self.hparams.n_samples]
        if rows:
            out.update(translation_scores([r["hypothesis"] for r in rows], [r["reference"] for r in rows]))
            out["sent_per_s"] = len(rows) / max(decode_s, 1e-9)
        for k, v in out.items():
            # sync_dist averages values that are already equal on every rank (no warning, no change).
            self.log(f"{stage}/{k}", v, prog_bar=k in ("loss", "bleu"), batch_size=1, sync_dist=True)
        self._last_rows = rows
        return out

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        out = self._eval_end("test")
        if not out or not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        rows, note = self._last_rows, ""
        size = len(getattr(self.trainer.test_dataloaders, "dataset", rows))
        if len(rows) < size:
            # limit_test_batches decodes a subset: keep line i = sentence i of the split, so the file
            # still lines up with the source and reference files.
            by_index = {r["index"]: r["hypothesis"] for r in rows}
            lines = [by_index.get(i, "") for i in range(size)]
            note = f" ({len(rows)} of {size} sentences decoded, the others are empty lines)"
        else:
            lines = [r["hypothesis"] for r in rows]
        (run_dir / "test_hypotheses.txt").write_text("".join(h + "\n" for h in lines), encoding="utf-8")
        sig = signatures()
        print(f"test: BLEU {out['bleu']:.2f} ({sig['bleu']}), lowercased BLEU {out['bleu_lc']:.2f}, "
              f"chrF {out['chrf']:.2f}, beam {self.hparams.beam_size}, {out['sent_per_s']:.1f} sent/s; "
              f"hypotheses in {run_dir / 'test_hypotheses.txt'}{note}", file=sys.stderr)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self.translate(batch)
