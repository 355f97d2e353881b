"""Where a ViT looks: CLS-to-patch attention per head and attention rollout, over the inputs.

- :func:`vit_attention` runs a ViT (ours via :func:`tx_suite.core.record_attention`, or timm's
  through its un-fused attention path) and returns the per-layer weights ``(B, H, T, T)``.
- :func:`attention_rollout` (Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers", sec. 3): average the heads, add the identity for the residual connection,
  renormalise the rows, and multiply the layers: ``R = A'_L ... A'_1`` with
  ``A'_l = 0.5 * mean_h(A_l) + 0.5 * I``.
- :class:`AttentionMaps` draws both for a fixed set of validation images after each
  validation epoch (and after testing) and logs the figure to W&B if a ``WandbLogger`` is
  attached, else saves ``<run dir>/figures/attention_val_e<epoch>.png`` / ``attention_test.png``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from tx_suite.tasks.callbacks.due import step_suffix, validation_due
from tx_suite.tasks.callbacks.log_step import metrics_log_step
from tx_suite.tasks.callbacks.sharded import skip_rank_zero_forward


@contextmanager
def _record_timm_attention(model: nn.Module):
    """Record ``(B, H, T, T)`` weights of each timm ``Attention`` via its non-fused path."""
    from timm.models.vision_transformer import Attention

    maps: dict[str, Tensor] = {}
    handles, fused = [], []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            fused.append((m, m.fused_attn))
            m.fused_attn = False  # the explicit softmax path passes the weights through attn_drop

            def hook(mod, args, name=name):
                maps[name] = args[0].detach()

            handles.append(m.attn_drop.register_forward_pre_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for m, f in fused:
            m.fused_attn = f


@torch.no_grad()
def vit_attention(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and the attention weights of every layer, first layer first.

    Args:
        model: :class:`tx_suite.models.vit.VisionTransformer` or a timm ``VisionTransformer``.
        images: ``(B, C, H, W)`` normalised.

    Returns:
        ``(B, num_classes)`` logits and a list of ``n_layers`` tensors ``(B, H, T, T)``
        (``T`` = prefix tokens + number of patches: 1 + N with one CLS token; float32).
    """
    from tx_suite.core import record_attention

    was_training = model.training
    model.eval()
    is_timm = type(model).__module__.startswith("timm.")
    recorder = _record_timm_attention(model) if is_timm else record_attention(model)
    try:
        with recorder as maps:
            # Not model(images): our forward computes only the CLS row in the last layer, and
            # rollout needs every row (timm's forward is this same composition).
            logits = model.forward_head(model.forward_features(images))
    finally:
        model.train(was_training)
    # module names end in the layer index (blocks.3.attn / encoder.layers.3.self_attn)
    order = sorted(maps, key=lambda n: int(next(p for p in n.split(".") if p.isdigit())))
    return logits, [maps[n].float() for n in order]


def attention_rollout(attentions: list[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout ``(B, T, T)`` over layers (Abnar & Zuidema 2020, eq. in sec. 3).

    Args:
        attentions: per layer ``(B, H, T, T)`` row-stochastic weights, first layer first.
        residual: weight of the identity for the skip connection (0.5 in the paper).

    Returns:
        ``R = A'_L @ ... @ A'_1``, ``A'_l = (1 - residual) * mean_h A_l + residual * I`` with
        rows renormalised; each row sums to 1. Row 0 is the CLS token's attention flow.

    Raises:
        ValueError: ``attentions`` is empty (no layer: no rollout).
    """
    if not attentions:
        raise ValueError("attention_rollout needs the weights of at least one layer")
    rollout = None
    for attn in attentions:
        a = attn.mean(dim=1)  # (B, H, T, T) -> (B, T, T)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (1 - residual) * a + residual * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def cls_maps(attentions: list[Tensor], grid: tuple[int, int], layer: int = -1) -> tuple[Tensor, Tensor]:
    """CLS-to-patch maps: per head of ``layer`` ``(B, H, gh, gw)`` and rollout ``(B, gh, gw)``.

    The CLS column is dropped and each map rescaled to [0, 1] for display. Assumes exactly one
    prefix token, the CLS token, at position 0 (as every ViT config here: ``class_token`` on, no
    register tokens).
    """
    heads = attentions[layer][:, :, 0, 1:]  # (B, H, T, T) -> (B, H, N): CLS row, patch columns
    roll = attention_rollout(attentions)[:, 0, 1:]  # (B, N)

    def norm(m: Tensor) -> Tensor:
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-12)

    b, h = heads.shape[:2]
    return norm(heads).reshape(b, h, *grid), norm(roll).reshape(b, *grid)


def attention_figure(images: Tensor, heads: Tensor, rollout: Tensor, titles: list[str]):
    """A matplotlib figure: a row per image with input, rollout and per-head overlays.

    Args:
        images: ``(B, C, H, W)`` in [0, 1].
        heads: ``(B, nH, gh, gw)`` and ``rollout``: ``(B, gh, gw)``, both in [0, 1].
        titles: one label per row (e.g. ``"7 -> 7 (0.99)"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    b, nh = heads.shape[:2]
    size = images.shape[-2:]
    up = lambda m: F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
    heads_up = up(heads.flatten(0, 1)).reshape(b, nh, *size)
    roll_up = up(rollout)
    cols = 2 + nh
    fig, axes = plt.subplots(b, cols, figsize=(1.3 * cols, 1.3 * b + 0.3), squeeze=False)
    for i in range(b):
        img = images[i].permute(1, 2, 0).cpu().numpy()
        cmap = "gray" if img.shape[-1] == 1 else None
        img = img[..., 0] if img.shape[-1] == 1 else img
        panels = [(None, "input")] + [(roll_up[i], "rollout")] + [(heads_up[i, h], f"head {h}") for h in range(nh)]
        for j, (overlay, name) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap)
            if overlay is not None:
                ax.imshow(overlay.cpu().numpy(), cmap="jet", alpha=0.5)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
        axes[i, 0].set_ylabel(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def figure_to_image(fig):
    """A matplotlib figure as a PIL image (and close it)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def figure_tag(trainer: pl.Trainer, stage: str) -> str:
    """File-name tag: ``val_e007`` for validation epoch 7 (``val_e007_step000120`` where a fit
    validates several times an epoch, :func:`~tx_suite.tasks.callbacks.due.step_suffix`), ``test``
    for the test run."""
    return "test" if stage == "test" else f"{stage}_e{trainer.current_epoch:03d}{step_suffix(trainer)}"


def log_figure(trainer: pl.Trainer, key: str, image, filename: str) -> str:
    """Log a PIL image to the first ``WandbLogger``, or save it under ``<run dir>/figures/``.

    Returns:
        ``"wandb"`` or the saved file's path.
    """
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=metrics_log_step(trainer))
            return "wandb"
    folder = Path(trainer.default_root_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    image.save(path)
    return str(path)


class AttentionMaps(pl.Callback):
    """Draw CLS attention (per head of ``layer``) and rollout for ``num_images`` validation images.

    Args:
        num_images: images drawn (the first of the validation set, the same every epoch).
        every_n_epochs: draw after every n-th validation epoch of a fit and its last (and always
            after `validate` and testing; see :func:`~tx_suite.tasks.callbacks.due.validation_due`).
        layer: layer whose per-head CLS attention is drawn (-1 = last; negative counts from the end).

    Raises:
        ValueError: ``num_images`` or ``every_n_epochs`` below 1; (in ``setup``, before any
            training) ``layer`` outside ``[-n, n)`` for the model's ``n`` layers. Both used to
            fail at the first due drawing, after epochs of training.
    """

    def __init__(self, num_images: int = 6, every_n_epochs: int = 1, layer: int = -1) -> None:
        for name, value in (("num_images", num_images), ("every_n_epochs", every_n_epochs)):
            if value < 1:
                raise ValueError(f"AttentionMaps: {name} must be >= 1, got {value}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.layer = layer

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = pl_module.model
        # our ViT: encoder.layers; timm's: blocks
        layers = getattr(getattr(model, "encoder", None), "layers", None)
        n = len(layers if layers is not None else getattr(model, "blocks", []))
        if n and not -n <= self.layer < n:
            raise ValueError(f"AttentionMaps: layer {self.layer} does not exist in the {n}-layer model "
                             f"(use {-n}..{n - 1})")

    def _images(self, trainer: pl.Trainer, stage: str) -> tuple[Tensor, Tensor] | None:
        dm = trainer.datamodule
        dataset = getattr(dm, "val_set" if stage == "val" else "test_set", None) if dm is not None else None
        if dataset is None or len(dataset) == 0:
            return None
        pairs = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])

    def draw(self, trainer: pl.Trainer, pl_module, stage: str) -> str | None:
        batch = self._images(trainer, stage)
        if batch is None:
            return None
        x, y = batch
        model = pl_module.inference_model
        x = x.to(pl_module.device)
        logits, attentions = vit_attention(model, x)
        if not attentions:
            return None
        grid = tuple(s // p for s, p in zip(x.shape[-2:], _patch_size(model)))
        heads, roll = cls_maps(attentions, grid, self.layer)
        meta = pl_module.meta
        mean = torch.tensor(meta.get("mean", [0.0]), device=x.device)[:, None, None]
        std = torch.tensor(meta.get("std", [1.0]), device=x.device)[:, None, None]
        shown = (x * std + mean).clamp(0, 1)
        classes = meta.get("classes") or [str(i) for i in range(logits.shape[-1])]
        probs = logits.float().softmax(-1)
        titles = [f"{classes[t]} -> {classes[p]} ({probs[i, p]:.2f})"
                  for i, (t, p) in enumerate(zip(y.tolist(), probs.argmax(-1).tolist()))]
        image = figure_to_image(attention_figure(shown, heads, roll, titles))
        return log_figure(trainer, f"{stage}/attention", image, f"attention_{figure_tag(trainer, stage)}.png")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or skip_rank_zero_forward(trainer, "val/attention"):
            return
        if validation_due(trainer, self.every_n_epochs):
            self.draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero and not skip_rank_zero_forward(trainer, "test/attention"):
            self.draw(trainer, pl_module, "test")


def _patch_size(model: nn.Module) -> tuple[int, int]:
    """Pixels per token side: the patch size, times the conv stem's stride in a hybrid ViT."""
    p = getattr(model.patch_embed, "stride", model.patch_embed.patch_size)
    return (p, p) if isinstance(p, int) else tuple(p)
