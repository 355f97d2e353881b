"""Image classification task: a ViT backbone (ours or timm's) trained with timm's recipe.

One LightningModule for both backbones, so the two compare side by side on the dashboard:

- ``backbone: tx``: :class:`tx_suite.models.vit.VisionTransformer` (patch front-end + shared
  core ``EncoderOnly`` + head).
- ``backbone: timm``: ``timm.models.vision_transformer.VisionTransformer`` of the same size.

Recipe (DeiT, Touvron et al. 2021, sec. 6 / timm ``train.py``): AdamW from
``timm.optim.create_optimizer_v2`` with no weight decay on 1-D parameters (norms, biases) nor on
the names in the backbone's ``no_weight_decay()`` (position embedding, CLS token); cosine
schedule with linear warm-up from ``timm.scheduler.CosineLRScheduler`` stepped per optimizer
step; label smoothing (Szegedy et al. 2016, sec. 7); optional Mixup / CutMix
(``timm.data.Mixup``, Zhang et al. 2018 / Yun et al. 2019) and an EMA of the weights
(``timm.utils.ModelEmaV3``), which then is the model that is validated, tested and exported.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from tx_suite.tasks import epoch_tallies
from tx_suite.tasks.run_length import total_training_steps
from tx_suite.tasks.sdpa_backend import check_sdpa_backend, sdpa_backend_context

BACKBONES = ("tx", "timm")
POOLS = ("cls", "mean")
#: checkpoint key of the data metadata (classes, channels, size, normalisation) for inference
META_KEY = "tx_suite_vision"
#: checkpoint key of the epoch-level ``train/acc`` tallies of the epoch in progress
TRAIN_ACC_KEY = "tx_suite_train_acc"


def timm_arch(name: str) -> dict:
    """Sizes of a registered timm ViT (``"vit_tiny_patch16_224"``) as our argument names.

    Built on the meta device, so nothing is allocated or downloaded.

    Raises:
        ValueError: ``name`` is not a timm ViT model name.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models('vit_*'))")
    from timm.models.vision_transformer import Block, VisionTransformer

    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    # Other families (CrossViT, XCiT, Swin) and ViTs of other blocks (parallel ones) have no
    # sizes our encoder layers take. Extra tokens (registers, DeiT's distillation token) have
    # sizes; their weights are refused, naming the token, if pretrained weights are loaded.
    if not isinstance(m, VisionTransformer) or type(m.blocks[0]) is not Block:
        raise ValueError(f"timm model {name!r} is not a VisionTransformer of timm's standard Block: "
                         "our ViT has no layers of its kind")
    return {
        "patch_size": m.patch_embed.patch_size[0],
        "d_model": m.embed_dim,
        "n_layers": len(m.blocks),
        "n_heads": m.blocks[0].attn.num_heads,
        "d_ff": m.blocks[0].mlp.fc1.out_features,
        "img_size": m.patch_embed.img_size[0],
    }


def build_backbone(
    backbone: str,
    *,
    num_classes: int,
    img_size: int,
    in_chans: int,
    patch_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_ff: int,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    pool: str = "cls",
    stem_channels: list[int] | None = None,
    stem_strides: list[int] | None = None,
) -> nn.Module:
    """A randomly initialised ViT: ``(B, in_chans, img_size, img_size) -> (B, num_classes)`` logits.

    ``stem_channels`` / ``stem_strides``: a convolutional stem before the patch embedding (hybrid
    ViT, Dosovitskiy et al. 2020 §3.1; see :class:`tx_suite.frontends.ConvStem`); ours only.

    Raises:
        ValueError: unknown ``backbone`` or ``pool``, a size below 1 (``num_classes`` below 0),
            ``img_size`` not a multiple of ``patch_size`` (times the stem's stride), or a stem with
            ``backbone="timm"``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    sizes = dict(img_size=img_size, in_chans=in_chans, patch_size=patch_size,
                 d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)
    for name, value in sizes.items():  # (before the modulo below, which 0 would turn into a ZeroDivisionError)
        if value < 1:
            raise ValueError(f"model.{name} must be >= 1, got {value}")
    if num_classes < 0:  # 0: no head, the model returns its pooled features
        raise ValueError(f"model.num_classes must be >= 0, got {num_classes}")
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    if backbone == "timm" and (stem_channels or stem_strides):
        raise ValueError("stem_channels / stem_strides (a conv stem) are for backbone: tx; "
                         "timm's VisionTransformer has no conv stem")
    from tx_suite.models.vit import mlp_ratio_of

    if backbone == "timm":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool="token" if pool == "cls" else "avg",
            embed_dim=d_model,
            depth=n_layers,
            num_heads=n_heads,
            mlp_ratio=mlp_ratio_of(d_ff, d_model),
            pos_drop_rate=dropout,
            proj_drop_rate=dropout,
            attn_drop_rate=attn_dropout,
            drop_path_rate=drop_path,
        )
    from tx_suite.models.vit import VisionTransformer

    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        mlp_ratio=mlp_ratio_of(d_ff, d_model),
        dropout=dropout,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
        global_pool="token" if pool == "cls" else "avg",
        stem_channels=stem_channels or (),
        stem_strides=stem_strides,
    )


def _check_cxx_compiler() -> None:
    """Raise RuntimeError unless TorchInductor can find a C++ compiler (it builds CPU kernels with one).

    The name Inductor itself tries (``torch._inductor.config.cpp.cxx``): ``$CXX``, else ``g++``
    (``clang++`` on macOS); a ``clang++`` or ``c++`` elsewhere on the PATH does not help it.
    """
    import os
    import shutil
    import sys

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["clang++" if sys.platform == "darwin" else "g++"]
    if not any(shutil.which(n) for n in names):
        raise RuntimeError(f"compile: true on CPU needs a C++ compiler for TorchInductor ({' / '.join(names)} not "
                           "found); install one or set model.init_args.compile: false")


def _probe(host: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError within ``timeout`` seconds if ``host``:443 cannot be reached."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {host} ({e}); offline? pass a checkpoint file as pretrained") from e


def load_pretrained(model: nn.Module, source: str, timm_model: str | None = None,
                    old_grid_size: tuple[int, int] | None = None) -> None:
    """Load timm ViT weights into ``model`` (ours or timm's), in place, for fine-tuning.

    ``source`` is a checkpoint / state_dict file, or ``"timm"``: timm downloads ``timm_model``'s
    pretrained weights (online only; fails within seconds when offline). The weights are fitted
    to the model's image size, patch size, channels and classes by
    :func:`tx_suite.models.vit.load_timm_checkpoint` (position embedding resampled, input conv
    adapted, head of another size dropped); ``old_grid_size`` is the checkpoint's patch grid
    (default: square).

    Raises:
        FileNotFoundError, ValueError, ConnectionError: each names its cause.
    """
    from tx_suite.models.vit import load_timm_checkpoint, refuse_stem

    refuse_stem(model)  # before a download that could take minutes, or fail offline first
    if source == "timm":
        if not timm_model:
            raise ValueError("pretrained: timm needs timm_model (e.g. vit_tiny_patch16_224)")
        import timm

        _probe("huggingface.co")
        source = timm.create_model(timm_model, pretrained=True).state_dict()
    load_timm_checkpoint(model, source, old_grid_size=old_grid_size)


class ImageClassification(pl.LightningModule):
    """Classify ``(B, C, H, W)`` images into ``num_classes`` classes with a ViT.

    Args:
        backbone: ``"tx"`` (ours) or ``"timm"``.
        num_classes, img_size, in_chans: must match the datamodule (checked in ``setup``).
        patch_size, d_model, n_layers, n_heads, d_ff: ViT size (``d_ff`` = MLP hidden width).
        timm_model: name of a timm ViT (e.g. ``"vit_tiny_patch16_224"``) whose sizes replace the
            five above; needed with ``pretrained: timm``.
        dropout, attn_dropout: dropout after projections / on attention weights.
        drop_path: stochastic depth rate of the last block (linear from 0, Huang et al. 2016).
        pool: ``"cls"`` (the CLS token's output, Dosovitskiy et al. 2021 eq. 4) or ``"mean"``.
        stem_channels: channels of a convolutional stem (3x3 conv + BatchNorm + ReLU each) that
            feeds the patch embedding a feature map instead of the image: the hybrid ViT of
            Dosovitskiy et al. §3.1, stem as Xiao et al. 2021. ``None`` = plain ViT. ``tx`` only;
            not with ``pretrained`` (timm ViT weights have no stem).
        stem_strides: stride of each stem convolution (default 2 each); a token then covers
            ``prod(stem_strides) * patch_size`` pixels a side.
        pretrained: a timm ViT checkpoint or state_dict file (``.pth``/``.bin``/``.safetensors``)
            to start from, or ``"timm"`` to let timm download ``timm_model``'s weights (online
            only). The head is re-initialised if ``num_classes`` differs and the position
            embedding is resampled to the new grid.
        pretrained_grid_size: ``[rows, cols]`` patch grid of the ``pretrained`` weights, for
            weights trained on non-square images (a state dict does not say its grid: by default
            it is read as square, which pretrained timm ViTs are).
        lr, min_lr, warmup_lr: peak, final and initial learning rate.
        warmup_epochs: linear warm-up length in epochs (fractional allowed), as optimizer steps
            of the training loader's epoch, whether ``max_epochs`` or ``max_steps`` ends the run.
        weight_decay: AdamW decoupled weight decay (Loshchilov & Hutter 2019).
        optimizer: any ``timm.optim`` name (``adamw``, ``lamb``, ``sgd``, ...).
        label_smoothing: epsilon of label smoothing.
        mixup: keyword arguments of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``,
            ``prob``, ``switch_prob``, ...); ``None`` = off. Needs an even batch size.
        ema_decay: decay of an EMA of the weights (``ModelEmaV3`` with warm-up); ``None`` = off.
        sdpa_backend: force a ``torch.nn.attention.SDPBackend`` (``"math"``, ``"flash"``,
            ``"efficient"``, ``"cudnn"``) for all attention calls; ``None`` = PyTorch's choice.
            A CUDA-only kernel is not pinned off CUDA (one warning), so a GPU-trained
            checkpoint evaluates on a CPU.
            On CPU with bf16 autocast, ``"math"`` trains 1.3-2.1x faster (by host, RESULTS.md) than
            the default flash kernel at ViT-MNIST sizes (T = 50), whose bf16 backward is slow.
        compile: run the training forward through ``torch.compile`` (built when ``fit`` starts;
            the first steps wait for it, ~1 min on 2 CPU cores). Evaluation, export and the
            checkpoint's keys are unchanged: only the training call is compiled. On a 2-core CPU
            the ViT-MNIST training step in Lightning's loop is 1.3-1.5x faster in bf16
            and 1.3x in fp32 (``benchmarks/vision_compile.py``, ``benchmarks/RESULTS.md``).

    Raises:
        ValueError: unknown ``backbone``, ``pool`` or ``sdpa_backend``; ``img_size`` not a
            multiple of ``patch_size``; sizes that disagree with the datamodule (in ``setup``).
        RuntimeError: ``compile`` on CPU without a C++ compiler (when ``fit`` starts).
    """

    #: Arguments that do not shape the weights: with ``--ckpt_path`` a config file's value wins
    #: over the checkpoint's.
    RUNTIME_HPARAMS = ("sdpa_backend", "compile")
    #: Where the starting weights came from: with ``--ckpt_path`` they are in the checkpoint, and
    #: the source is not read again (it may be gone, or need the network).
    WEIGHT_SOURCE_HPARAMS = ("pretrained",)

    def __init__(
        self,
        backbone: str = "tx",
        num_classes: int = 10,
        img_size: int = 28,
        in_chans: int = 1,
        patch_size: int = 4,
        d_model: int = 192,
        n_layers: int = 6,
        n_heads: int = 3,
        d_ff: int = 768,
        timm_model: str | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.1,
        pool: str = "cls",
        stem_channels: list[int] | None = None,
        stem_strides: list[int] | None = None,
        pretrained: str | None = None,
        pretrained_grid_size: list[int] | None = None,
        lr: float = 1e-3,
        min_lr: float = 1e-5,
        warmup_lr: float = 1e-6,
        warmup_epochs: float = 5.0,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        label_smoothing: float = 0.1,
        mixup: dict | None = None,
        ema_decay: float | None = None,
        sdpa_backend: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_sdpa_backend(sdpa_backend)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        arch = dict(patch_size=patch_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)
        if timm_model:
            arch.update({k: v for k, v in timm_arch(timm_model).items() if k in arch})
        self.model = build_backbone(
            backbone,
            num_classes=num_classes,
            img_size=img_size,
            in_chans=in_chans,
            dropout=dropout,
            attn_dropout=attn_dropout,
            drop_path=drop_path,
            pool=pool,
            stem_channels=stem_channels,
            stem_strides=stem_strides,
            **arch,
        )
        if pretrained:
            load_pretrained(self.model, pretrained, timm_model=timm_model,
                            old_grid_size=tuple(pretrained_grid_size) if pretrained_grid_size else None)
        self.mixup_fn = None
        if mixup:
            from timm.data import Mixup

            self.mixup_fn = Mixup(**{"label_smoothing": label_smoothing, **mixup}, num_classes=num_classes)
        self.ema = None
        if ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=True)
            # ModelEmaV3 leaves the copy's requires_grad on: DDP would then expect gradients for it
            # (and fail: "parameters that were not used in producing the loss"), and the model
            # summary would count it as trainable.
            self.ema.requires_grad_(False)
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "acc": MulticlassAccuracy(num_classes, average="micro"),
                        "acc_class": MulticlassAccuracy(num_classes, average="none"),
                        "confmat": MulticlassConfusionMatrix(num_classes),
                    }
                )
                for stage in ("val", "test")
            }
        )
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self._resumed_train_acc: dict | None = None  # TRAIN_ACC_KEY of the checkpoint fit resumes
        #: data metadata (classes, in_chans, img_size, mean, std); from the datamodule or a checkpoint
        self.meta: dict = {}
        #: last epoch's (num_classes, num_classes) confusion matrix and per-class accuracy per stage
        self.last_confmat: dict[str, torch.Tensor] = {}
        self.last_acc_class: dict[str, torch.Tensor] = {}
        #: ``torch.compile`` of ``self.model.forward`` for training steps, built by ``on_fit_start``
        self._compiled_forward = None
        #: the warnings filter that hides Lightning's eval-mode warning for the EMA copy, while active
        self._ema_warning_filter: warnings.catch_warnings | None = None

    # -- inference ------------------------------------------------------------------------------
    @property
    def inference_model(self) -> nn.Module:
        """The EMA weights if kept, else the trained ones: what is evaluated and exported."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` normalised images -> ``(B, num_classes)`` logits of the inference model."""
        with sdpa_backend_context(self.hparams.sdpa_backend, x.device):
            return self.inference_model(x)

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "metadata"):
            return
        meta = dm.metadata()
        hp = self.hparams
        for key, ours in (("num_classes", hp.num_classes), ("in_chans", hp.in_chans), ("img_size", hp.img_size)):
            theirs = len(meta["classes"]) if key == "num_classes" else meta[key]
            if theirs != ours:
                raise ValueError(f"model.{key}={ours} but the data gives {theirs}; set model.{key}: {theirs}")
        batch_size = getattr(dm, "batch_size", None)
        if stage == "fit" and self.mixup_fn is not None and isinstance(batch_size, int) and batch_size % 2:
            # timm's Mixup pairs each image with its mirror in the batch; found here, not after the sanity check
            raise ValueError(f"model.mixup needs an even data.batch_size, got {batch_size}")
        self.meta = meta

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.meta:
            checkpoint[META_KEY] = self.meta
        # `train/acc` is an epoch-level running accuracy: a run resumed mid-epoch continues its tallies.
        tallies = epoch_tallies.pack(self._trainer, self.train_acc.metric_state)
        if tallies is not None:
            checkpoint[TRAIN_ACC_KEY] = tallies

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.meta = checkpoint.get(META_KEY, self.meta)
        self._resumed_train_acc = checkpoint.get(TRAIN_ACC_KEY)

    # -- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # A compiled *function*, not module: as an attribute it stays out of the state_dict (an
        # OptimizedModule would add `_orig_mod.` keys), and eval calls keep the eager model.
        if self.hparams.compile and self._compiled_forward is None:
            if self.device.type == "cpu":
                _check_cxx_compiler()
            self._compiled_forward = torch.compile(self.model.forward)
        # The EMA copy stays in eval mode on purpose (it is only evaluated); Lightning warns about
        # any eval-mode module when training starts, which every EMA run would print. Hide that
        # warning until on_train_start, and only when the EMA copy is all it would report.
        if self.ema is not None and self._ema_warning_filter is None and not any(
                not m.training and n != "ema" and not n.startswith("ema.") for n, m in self.named_modules()):
            self._ema_warning_filter = warnings.catch_warnings()
            self._ema_warning_filter.__enter__()
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def on_train_start(self) -> None:
        self._end_ema_warning_filter()
        state = epoch_tallies.unpack(self._resumed_train_acc, self.trainer)
        self._resumed_train_acc = None
        if state is not None:
            self.train_acc.reset()
            self.train_acc.merge_state({k: v.to(self.device) for k, v in state.items()})

    def teardown(self, stage: str) -> None:
        self._end_ema_warning_filter()  # a fit that failed before training started

    def _end_ema_warning_filter(self) -> None:
        if self._ema_warning_filter is not None:
            self._ema_warning_filter.__exit__(None, None, None)
            self._ema_warning_filter = None

    def _train_logits(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model if self._compiled_forward is None else self._compiled_forward
        with sdpa_backend_context(self.hparams.sdpa_backend, x.device):
            return model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup_fn is not None:
            x, soft = self.mixup_fn(x, y)  # soft: (B, num_classes) mixed, smoothed targets
            logits = self._train_logits(x)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self._train_logits(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
            self.train_acc(logits, y)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: Lightning runs the callbacks' batch-end hooks (a mid-epoch
        # ModelCheckpoint save) before the module's, so a checkpoint would miss this step's update.
        if self.ema is not None:
            # global_step counts this step only after optimizer_step returns: + 1 numbers the
            # updates 1, 2, ... (the warm-up's step), as when this ran at batch end.
            self.ema.update(self.model, step=self.global_step + 1)

    def _eval_step(self, stage: str, batch) -> dict:
        x, y = batch
        logits = self(x).float()
        loss = F.cross_entropy(logits, y)
        for metric in self.metrics[stage].values():
            metric.update(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", self.metrics[stage]["acc"], prog_bar=stage == "val")
        return {"logits": logits.detach(), "preds": logits.argmax(-1)}

    def validation_step(self, batch, batch_idx: int) -> dict:
        return self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> dict:
        return self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self.metrics[stage]
        acc_class = metrics["acc_class"].compute().cpu().float()
        self.last_confmat[stage] = confmat = metrics["confmat"].compute().cpu()
        # torchmetrics gives 0 to a class with no example (a limited slice): it has no accuracy.
        present = confmat.sum(1) > 0
        self.last_acc_class[stage] = acc_class = acc_class.masked_fill(~present, float("nan"))
        names = self.meta.get("classes") or [str(i) for i in range(self.hparams.num_classes)]
        if len(names) <= 20:  # a scalar per class reads well on the dashboard only for few classes
            for name, acc, seen in zip(names, acc_class.tolist(), present.tolist()):
                if seen:
                    self.log(f"{stage}/acc_{name}", acc)
        metrics["acc_class"].reset()
        metrics["confmat"].reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(-1)

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        class _ThisRunsCosine(CosineLRScheduler):
            # timm computes the rate from the update count alone, so there is no position to
            # restore; its saved fields would bring back the old run length (t_initial), and a
            # run trained further (--ckpt_path last, more max_steps) would spend its new steps at min_lr.
            def load_state_dict(self, state_dict: dict) -> None:
                pass

        hp = self.hparams
        # timm reads model.no_weight_decay() and skips 1-D params: no decay on norms, biases,
        # position embedding and CLS token (DeiT / timm recipe).
        optimizer = create_optimizer_v2(self.model, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay)
        total = total_training_steps(self.trainer, "cosine")
        warmup = min(self._warmup_steps(total), max(total - 1, 0))
        # warmup_prefix: the cosine starts at the peak when the warm-up ends and reaches lr_min
        # after the last step (timm's default would start it mid-way, at cos(pi * warmup / total)).
        # (The last step runs one cosine step above lr_min; kept, as every recorded run used it.)
        scheduler = _ThisRunsCosine(
            optimizer,
            t_initial=max(total - warmup, 1),
            warmup_prefix=True,
            lr_min=hp.min_lr,
            warmup_t=warmup,
            warmup_lr_init=hp.warmup_lr,
            t_in_epochs=False,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _warmup_steps(self, total: int) -> int:
        """Optimizer steps of ``warmup_epochs`` epochs: ``ceil(warmup_epochs * ceil(batches / accumulate))``.

        An epoch's length, not ``total / max_epochs``: ``max_steps`` may end the run before
        ``max_epochs`` (or ``max_epochs`` is -1). A training loader without a length (iterable)
        has no epoch length; its warm-up then spreads ``total`` evenly over ``max_epochs``.

        Raises:
            ValueError: ``warmup_epochs`` > 0 with a loader without a length and no ``max_epochs``.
        """
        trainer, epochs = self.trainer, self.hparams.warmup_epochs
        if not epochs:
            return 0
        if trainer.train_dataloader is None:  # estimated_stepping_batches skips it when max_epochs is -1
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if batches != float("inf"):
            # Lightning steps the optimizer on an epoch's last, incomplete accumulation too.
            return int(math.ceil(epochs * math.ceil(batches / trainer.accumulate_grad_batches)))
        if trainer.max_epochs and trainer.max_epochs > 0:
            return int(math.ceil(epochs * total / trainer.max_epochs))
        raise ValueError(f"model.warmup_epochs={epochs} needs epochs of known length, but the training loader has "
                         "no length and trainer.max_epochs is not set; set model.warmup_epochs: 0 or max_epochs")

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are not torch LRSchedulers: they take the number of updates done.
        scheduler.step_update(num_updates=self.global_step)


def load_classifier(path: str | Path, map_location: str = "cpu") -> ImageClassification:
    """An :class:`ImageClassification` from a Lightning checkpoint, read with ``weights_only=True``.

    ``pretrained`` is dropped from the saved hyper-parameters (the checkpoint holds the weights);
    the training run's :attr:`~ImageClassification.RUNTIME_HPARAMS` are reset (``sdpa_backend``
    to ``None``, PyTorch's choice for the device it runs on; ``compile`` to ``False``).
    ``model.meta`` holds the data metadata saved with it (empty for checkpoints without it).

    Raises:
        tx_suite.utils.checkpoint.CheckpointError: missing, corrupt or unsafe file (a ValueError).
        ValueError: the file is not a Lightning checkpoint of this task.
    """
    from tx_suite.utils.checkpoint import init_kwargs, load_checkpoint, state_dict_mismatch

    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict / hyper_parameters)")
    stored = str(ckpt["hyper_parameters"].get("_class_path", "")).rsplit(".", 1)[-1]
    if stored and stored != ImageClassification.__name__:
        raise ValueError(f"{path} is a {stored} checkpoint, not an image classifier (ImageClassification)")
    hparams = init_kwargs(ckpt["hyper_parameters"])
    hparams["pretrained"] = None
    # Choices of the training machine: a GPU-only kernel (efficient, cudnn) is not pinned on a CPU
    # anyway (with a warning), and inference never runs the compiled training forward.
    hparams.update(sdpa_backend=None, compile=False)
    try:
        model = ImageClassification(**hparams)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{path} is not an image-classification checkpoint: {state_dict_mismatch(e)}") from e
    model.meta = ckpt.get(META_KEY, {})
    return model.eval()
