"""Attention heat maps per head for fixed sentences, after each validation.

For each sentence the model's own greedy translation is fed back with teacher forcing inside
:func:`tx_suite.core.record_attention`, and for the chosen layers two figures are drawn, one panel
per head: encoder self-attention (source x source) and decoder cross-attention (target x source).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from tx_suite.core import record_attention
from tx_suite.data.text_normalize import normalize_source
from tx_suite.data.translation_dataset import encode_source, pad_batch
from tx_suite.tasks.callbacks.due import step_suffix, validation_due
from tx_suite.tasks.callbacks.log_step import metrics_log_step
from tx_suite.tasks.callbacks.sharded import skip_rank_zero_forward
from tx_suite.tasks.callbacks.translation_samples import run_dir


def plot_heads(weights: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str):
    """A matplotlib figure with one heat map per head.

    Args:
        weights: ``(H, Tq, Tk)`` attention probabilities.
        row_labels: ``Tq`` query token strings; col_labels: ``Tk`` key token strings.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, tq, tk = weights.shape
    cols = min(h, 4)
    rows = (h + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (0.22 * tk + 1.5), rows * (0.22 * tq + 1.5)), squeeze=False)
    vmax = float(weights.max()) or 1.0  # one colour scale for all heads of the figure
    for i, ax in enumerate(axes.flat):
        if i >= h:
            ax.axis("off")
            continue
        ax.imshow(weights[i].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_title(f"head {i}", fontsize=8)
        ax.set_xticks(range(tk), col_labels, rotation=90, fontsize=6)
        ax.set_yticks(range(tq), row_labels, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)  # pyplot keeps every figure alive until closed


def _to_image(fig):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class TranslationAttentionMaps(pl.Callback):
    """Draw per-head attention maps for fixed sentences after every ``every_n_epochs`` validations.

    With a :class:`WandbLogger` the images are logged under ``val/attention/...``; otherwise they
    are saved as ``<run dir>/attention/epoch{E}_{kind}_layer{L}_s{i}.png``.

    Args:
        sentences: source sentences to show, read as ``tx-suite translate`` reads its input
            (normalized; lowercased when the datamodule's ``lowercase`` is set). Default: the
            first ``n_sentences`` of the validation split.
        n_sentences: how many validation sentences when ``sentences`` is not given.
        layers: layer indices to draw (default: the last layer; negative counts from the end).
            Each must exist in both the encoder and the decoder, checked when the run starts.
        every_n_epochs: draw every n-th validation of a fit and its last (and every `validate` run).
        max_tokens: sentences are truncated to this many source tokens, to keep figures legible.

    Raises:
        ValueError: a layer index outside ``[-n, n)`` for the encoder's or decoder's ``n`` layers
            (in ``setup``, before any training).
    """

    def __init__(self, sentences: list[str] | None = None, n_sentences: int = 2, layers: list[int] | None = None,
                 every_n_epochs: int = 1, max_tokens: int = 30):
        self.sentences = sentences
        self.n_sentences = n_sentences
        self.layers = layers if layers is not None else [-1]
        self.every_n_epochs = every_n_epochs
        self.max_tokens = max_tokens
        self.saved: list[str] = []

    @staticmethod
    def _layer_index(layer: int, n: int, stack: str) -> int:
        """``layer`` as an index in ``range(n)`` (negative counts from the end).

        Raises:
            ValueError: outside ``[-n, n)``: wrapping would draw another layer than the one named.
        """
        if not -n <= layer < n:
            raise ValueError(f"TranslationAttentionMaps: layer {layer} does not exist in the {n}-layer {stack} "
                             f"(use {-n}..{n - 1})")
        return layer % n

    def _stack_sizes(self, pl_module: pl.LightningModule) -> tuple[int, int]:
        tx = pl_module.model.transformer
        return len(tx.encoder.layers), len(tx.decoder.layers)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        n_enc, n_dec = self._stack_sizes(pl_module)
        for layer in self.layers:
            self._layer_index(layer, n_enc, "encoder")
            self._layer_index(layer, n_dec, "decoder")

    def _sources(self, trainer: pl.Trainer) -> list[str]:
        dm = getattr(trainer, "datamodule", None)
        if self.sentences:
            # As `tx-suite translate` reads them: the form of the training text (lowercased for a
            # model trained on lowercased text), or the maps show input the model never sees.
            lowercase = bool((getattr(dm, "hparams", None) or {}).get("lowercase", False))
            return [normalize_source(s.lower() if lowercase else s) for s in self.sentences]
        ds = dm.dataset(dm.hparams.val_split, train=False)
        return list(ds.src_text[: self.n_sentences])

    @torch.no_grad()
    def attention_maps(self, pl_module: pl.LightningModule, sources: list[str]) -> list[dict]:
        """For each sentence: source/target token strings and ``{module name: (H, Tq, Tk)}`` maps."""
        tok = pl_module.tokenizer
        model = pl_module.model
        was_training = model.training
        model.eval()
        device = pl_module.device
        out = []
        try:
            for text in sources:
                src = encode_source(tok, [text], self.max_tokens)[0]
                src_ids, src_mask = pad_batch([src])
                src_ids, src_mask = src_ids.to(device), src_mask.to(device)
                hyp = pl_module.generate(src_ids, src_mask, beam_size=1)[0]
                hyp = hyp[hyp != tok.pad_id]
                tgt_in = torch.cat([torch.tensor([pl_module.start_id], device=device), hyp[:-1]])[None]
                with record_attention(model) as maps:
                    model(src_ids, tgt_in, src_mask)
                # Row i of the decoder maps is the query that predicted output token i: label rows by output.
                out.append({"src": tok.tokens(src.tolist()), "tgt": tok.tokens(hyp.tolist()),
                            "maps": {k: v[0] for k, v in maps.items()}})
        finally:
            model.train(was_training)
        return out

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not validation_due(trainer, self.every_n_epochs):
            return
        if skip_rank_zero_forward(trainer, "attention maps"):
            return
        results = self.attention_maps(pl_module, self._sources(trainer))
        n_enc, n_dec = self._stack_sizes(pl_module)
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        epoch = trainer.current_epoch
        for layer in self.layers:
            for kind, n, name, rows_key, stack in (
                    ("encoder_self", n_enc, "transformer.encoder.layers.{}.self_attn", "src", "encoder"),
                    ("cross", n_dec, "transformer.decoder.layers.{}.cross_attn", "tgt", "decoder")):
                li = self._layer_index(layer, n, stack)
                images, captions = [], []
                for i, r in enumerate(results):
                    title = f"{kind} attention, layer {li}, epoch {epoch}"
                    fig = plot_heads(r["maps"][name.format(li)], r[rows_key], r["src"], title)
                    if wandb:
                        images.append(_to_image(fig))
                        captions.append("".join(r["src"]).replace("▁", " ").strip())
                    else:
                        folder = run_dir(trainer) / "attention"
                        folder.mkdir(parents=True, exist_ok=True)
                        path = folder / f"epoch{epoch:03d}{step_suffix(trainer)}_{kind}_layer{li}_s{i}.png"
                        fig.savefig(path, dpi=100)
                        _close(fig)
                        self.saved.append(str(path))
                # One key per sentence: figure sizes follow sentence lengths, and W&B shows a list
                # of images of different sizes under one key distorted (it warns every epoch).
                step = metrics_log_step(trainer)
                for lg in wandb:
                    for i, (image, caption) in enumerate(zip(images, captions)):
                        lg.log_image(f"val/attention/{kind}_layer{li}/s{i}", [image], step=step, caption=[caption])
