"""Vision Transformer (Dosovitskiy et al. 2020) from the shared core and the patch front-end."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..core import Dropout, EncoderOnly, TransformerConfig
from ..frontends import ConvStem, PatchEmbedding

GLOBAL_POOLS = ("token", "avg")


class VisionTransformer(nn.Module):
    """ViT: patch embedding + CLS -> pre-norm encoder -> pooled representation -> linear head.

    ViT §3.1: ``z_0 = [x_class; x_p E] + E_pos``, ``L`` pre-norm layers with GELU MLPs, and
    ``y = LN(z_L^0)`` (the CLS output) goes to the classifier, a single linear layer (the paper's
    fine-tuning head; its pre-training head has one hidden layer). ``global_pool="avg"`` averages the
    patch outputs instead (§D.3 / timm), normalising after pooling as timm does. The module and
    parameter layout follow timm's ``VisionTransformer`` so that :func:`checkpoint_filter_fn`
    loads any timm ViT checkpoint of the same shape.

    Args:
        img_size: input size (int or (H, W)).
        patch_size: patch side ``P``.
        in_chans: image channels.
        num_classes: classes (0 = no head; ``forward`` returns the pooled features).
        d_model: width ``D``.
        n_layers: depth ``L``.
        n_heads: heads.
        mlp_ratio: ``d_ff / d_model`` (4 in ViT).
        dropout: dropout in MLP/residual branches and after the position embedding.
        attn_dropout: dropout on attention weights.
        drop_path: stochastic-depth rate of the last layer (linear over depth).
        global_pool: ``"token"`` (CLS) or ``"avg"``.
        class_token: use a CLS token (required for ``global_pool="token"``).
        norm_eps: LayerNorm epsilon (1e-6 as timm).
        head_dropout: dropout before the head.
        stem_channels: output channels of a convolutional stem (:class:`ConvStem`, 3x3 conv + BN +
            ReLU each) that turns the image into a feature map before the patch embedding: the
            hybrid ViT of §3.1. Empty (default) = patches of the raw image.
        stem_strides: stride of each stem convolution (default 2 each). ``img_size`` must be a
            multiple of their product times ``patch_size``.

    Shapes: ``(B, C, H, W) -> (B, num_classes)``.

    Raises:
        ValueError: unknown ``global_pool`` or ``"token"`` pooling without a class token; a stem
            or image size that does not fit (see :class:`ConvStem`, :class:`PatchEmbedding`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        d_model: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        global_pool: str = "token",
        class_token: bool = True,
        norm_eps: float = 1e-6,
        head_dropout: float = 0.0,
        stem_channels: Sequence[int] = (),
        stem_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; choose one of {GLOBAL_POOLS}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        self.global_pool = global_pool
        self.num_classes = num_classes
        if stem_strides is not None and not stem_channels:
            raise ValueError("stem_strides needs stem_channels (the conv stem's channels)")
        stem = ConvStem(in_chans, stem_channels, stem_strides) if stem_channels else None
        self.patch_embed = PatchEmbedding(img_size, patch_size, in_chans, d_model, class_token, dropout, stem)
        cfg = TransformerConfig(
            d_model=d_model, n_heads=n_heads, d_ff=int(d_model * mlp_ratio), dropout=dropout,  # as timm
            attn_dropout=attn_dropout, activation="gelu", norm_first=True, norm_eps=norm_eps,
            drop_path=drop_path, final_norm=global_pool == "token",
        )
        self.encoder = EncoderOnly(cfg, n_layers)
        self.fc_norm = nn.LayerNorm(d_model, eps=norm_eps) if global_pool == "avg" else nn.Identity()
        self.head_drop = Dropout(head_dropout)
        self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default ("original timm impl"): Linear N(0, 0.02) truncated, zero bias.
        for m in list(self.encoder.modules()) + [self.head]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return self.patch_embed.num_prefix_tokens

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides norms and biases (timm's convention)."""
        names = {"patch_embed.pos_embed"}
        if self.patch_embed.cls_token is not None:
            names.add("patch_embed.cls_token")
        return names

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, prefix + N, D)``: encoder outputs (normalised for token pooling)."""
        return self.encoder(self.patch_embed(images))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``(B, prefix + N, D)`` to ``(B, D)``, then the classifier (unless ``pre_logits``)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, num_classes)``; equal to ``forward_head(forward_features(images))``.

        With CLS pooling the head reads one row, so the last layer computes only that row's query,
        attention output and MLP (keys/values still cover every patch): the same logits for less
        work. Call ``forward_features`` for every token's output (attention maps, rollout).
        """
        if self.global_pool == "token":
            return self.forward_head(self.encoder(self.patch_embed(images), n_outputs=1))
        return self.forward_head(self.forward_features(images))


_TIMM_RENAMES = [
    (r"^cls_token$", "patch_embed.cls_token"),
    (r"^pos_embed$", "patch_embed.pos_embed"),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv_proj."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc(\d)\.", r"encoder.layers.\1.ffn.fc\2."),
    (r"^blocks\.(\d+)\.norm(\d)\.", r"encoder.layers.\1.norm\2."),
    (r"^norm\.", "encoder.norm."),
]


def _rename(key: str) -> str:
    """A timm ViT weight name in this ViT's layout (``blocks.0.attn.qkv.weight`` ->
    ``encoder.layers.0.self_attn.qkv_proj.weight``); other names are returned unchanged."""
    for pattern, repl in _TIMM_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def resample_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int, old_grid: tuple[int, int] | None = None,
) -> Tensor:
    """Resample a ViT position embedding ``(1, prefix + h*w, D)`` to ``(1, prefix + H*W, D)``.

    Bicubic interpolation of the patch positions on their 2-D grid (ViT §3.2, "2D interpolation of
    the pre-trained position embeddings"); prefix (CLS) rows are kept. A state dict does not record
    its grid, so ``old_grid`` defaults to a square one, as timm assumes.

    Raises:
        ValueError: ``old_grid`` does not hold the embedding's patch count, or it is not given and
            that count is not a square.
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"the pretrained position embedding has {n} patch positions, not a square grid: "
                "give its grid size (old_grid_size=(rows, cols))"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid_size {tuple(old_grid)} does not hold the position embedding's {n} patch positions")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix_tokens,
    )


def mlp_ratio_of(d_ff: int, d_model: int) -> float:
    """The ``mlp_ratio`` that makes a ViT (ours or timm's: both build ``int(d_model * mlp_ratio)``
    units) have exactly ``d_ff`` MLP units. ``d_ff / d_model`` can land just below in floating point
    (115 / 56 * 56 = 114.99..., one unit lost); a thousandth of a unit more cannot reach ``d_ff + 1``."""
    return (d_ff + 1e-3) / d_model


def _resample_wanted(
    pos_embed: Tensor, model_rows: int, grid: tuple[int, int], prefix: int, old_grid: tuple[int, int] | None,
) -> bool:
    """Whether ``pos_embed`` must be resampled to ``grid``: a given ``old_grid`` other than ``grid``;
    without one, another row count, or a square patch count (the grid a state dict is taken to
    have, as every pretrained timm ViT's is) when ``grid`` is not that square: 14 x 14 weights into
    a 7 x 28 grid have the same row count but must be resampled. Weights saved from a non-square
    grid whose patch count is a square (2 x 8) therefore need ``old_grid`` even to load into the
    same grid."""
    if old_grid is not None:
        return tuple(old_grid) != tuple(grid)
    if pos_embed.shape[1] != model_rows:
        return True
    n = pos_embed.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    return side * side == n and tuple(grid) != (side, side)


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: VisionTransformer, old_grid_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Convert a timm ``VisionTransformer`` state dict (or a ``{"model"/"state_dict": ...}``
    checkpoint) to this model's layout.

    The conv patch projection ``(D, C, P, P)`` is flattened to the linear ``(D, C*P*P)``; the
    position embedding is resampled (:func:`resample_pos_embed`) from ``old_grid_size`` (default:
    a square grid) to ``model``'s patch grid when the two differ. A head of a different size, or
    any head when ``model`` has none (``num_classes=0``), is dropped (fine-tuning on new classes
    keeps the new head); every other weight must have a place in ``model``.

    Raises:
        ValueError: the checkpoint uses features this ViT does not have (register tokens,
            layer scale, QK-norm, attention pooling, ...) or lacks its class token; the message
            names the first offending key. A position embedding without rows for the class token
            (timm ``no_embed_class``, DeiT III), or one that is not square and has no ``old_grid_size``.
            A ``model`` with a conv stem (timm ViT weights have none).
    """
    refuse_stem(model)
    for wrapper in ("state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    target = model.state_dict()
    renamed = {key: _rename(key) for key in state_dict}
    # All names first: a weight this ViT lacks (reg_token) also changes how pos_embed must be read.
    for key, new in renamed.items():
        if new not in target and not new.startswith("head."):
            raise ValueError(f"cannot map timm weight {key!r}{_feature_hint(key)} onto this VisionTransformer")
    _check_token_layout(state_dict, timm_twin(model), old_grid_size)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = renamed[key]
        if new == "patch_embed.proj.weight" and value.dim() == 4:
            value = value.flatten(1)  # (D, C, P, P) -> (D, C*P*P), same order as the einops patchify
        elif new == "patch_embed.pos_embed" and _resample_wanted(
                value, target[new].shape[1], model.patch_embed.grid_size, model.num_prefix_tokens, old_grid_size):
            value = resample_pos_embed(value, model.patch_embed.grid_size, model.num_prefix_tokens, old_grid_size)
        elif new.startswith("head.") and (new not in target or value.shape != target[new].shape):
            continue  # no head (num_classes=0) or another class count: the model keeps its own
        out[new] = value
    return out


def load_timm_state_dict(model: VisionTransformer, state_dict: dict[str, Tensor], strict: bool = True):
    """Load a timm ViT state dict into ``model`` through :func:`checkpoint_filter_fn`.

    With a head of another size skipped, loading is non-strict for the head only.
    """
    converted = checkpoint_filter_fn(state_dict, model)
    missing = [k for k in model.state_dict() if k not in converted]
    if strict and any(not k.startswith("head.") for k in missing):
        raise ValueError(f"timm checkpoint lacks weights for: {missing[:5]}")
    return model.load_state_dict(converted, strict=False)


# -- timm checkpoint files (vision helper): read, fit to a new size / channels / head, load ------


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception message (torch's unpickling errors run long)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def read_timm_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a timm checkpoint or state_dict file (``.pth``/``.bin``/``.safetensors``).

    Read with ``weights_only=True`` by ``timm.models.load_state_dict``: EMA weights are preferred
    when the file has them, ``state_dict``/``model`` wrappers and ``module.`` / ``_orig_mod.``
    prefixes are removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as a state dict of tensors, or is a Lightning checkpoint.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    try:
        sd = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors have many types
        if path.suffix != ".safetensors":
            from tx_suite.utils.checkpoint import load_checkpoint

            load_checkpoint(path)  # its CheckpointError (a ValueError) says why, without torch's "retry unsafely"
        raise ValueError(f"cannot read weights from {path}: {type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    if any(k.startswith("model.") for k in sd):  # timm's own names never start so; a LightningModule's do
        raise ValueError(f"{path} is a Lightning checkpoint (weights named model.*), not timm ViT weights: "
                         "evaluate or resume it with --ckpt_path")
    return sd


def refuse_stem(model: nn.Module) -> None:
    """Raise ValueError for a hybrid ViT: timm's plain ViT weights have no conv stem to fill it."""
    if getattr(getattr(model, "patch_embed", None), "stem", None) is not None:
        raise ValueError("this ViT has a conv stem (stem_channels) and timm ViT weights have none: "
                         "start it from scratch, or drop stem_channels to fine-tune timm weights")


def timm_twin(model: VisionTransformer) -> nn.Module:
    """timm ``VisionTransformer`` with ``model``'s configuration, on the meta device (no memory).

    Raises:
        ValueError: ``model`` has a conv stem, which timm's ``VisionTransformer`` has no place for.
    """
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    refuse_stem(model)
    layer = model.encoder.layers[0]
    d_model = model.patch_embed.proj.out_features
    with torch.device("meta"):
        return TimmViT(
            img_size=model.patch_embed.img_size, patch_size=model.patch_embed.patch_size,
            in_chans=model.patch_embed.in_chans, num_classes=model.num_classes, global_pool=model.global_pool,
            embed_dim=d_model, depth=len(model.encoder.layers), num_heads=layer.self_attn.n_heads,
            mlp_ratio=mlp_ratio_of(layer.ffn.fc1.out_features, d_model), class_token=model.patch_embed.cls_token is not None,
        )


#: what a timm ViT weight this ViT lacks is for (name pattern, feature and the timm argument)
_TIMM_FEATURES = [
    (r"\.ls\d\.gamma$|\.gamma_\d$", "layer scale, timm init_values"),
    (r"\.[qk]_norm\.", "QK-norm, timm qk_norm=True"),
    (r"^reg_token$", "register tokens, timm reg_tokens"),
    (r"^dist_token$|^head_dist\.", "a distillation token, timm's DeiT VisionTransformerDistilled"),
    (r"^attn_pool\.", "attention pooling, timm global_pool='map'"),
    (r"^norm_pre\.", "a norm before the blocks, timm pre_norm=True"),
    (r"^fc_norm\.", "a norm after pooling, timm fc_norm / global_pool='avg'"),
    (r"^patch_embed\.norm\.", "a norm in the patch embedding"),
    (r"\.(attn|mlp)\.norm\.", "a norm inside the attention / MLP, timm scale_attn_norm / scale_mlp_norm"),
]


def _feature_hint(key: str) -> str:
    """`` (layer scale, timm init_values)`` for a known timm feature's weight, else ``""``."""
    return next((f" ({what})" for pattern, what in _TIMM_FEATURES if re.search(pattern, key)), "")


def _check_token_layout(
    sd: dict[str, Tensor], timm_vit: nn.Module, old_grid_size: tuple[int, int] | None = None,
) -> None:
    """Refuse a timm state dict whose prefix tokens (CLS, registers) or position-embedding rows
    differ from ``timm_vit``'s: the resampling that follows splits ``pos_embed`` with the model's
    prefix count, and would fail with a misleading message (or mix token rows into the grid).

    Only a ``pos_embed`` that is to be resampled is checked: it must hold one row per prefix
    token plus the ``old_grid_size`` grid (default: a square one). A row count that is square
    only without the prefix rows is taken for timm's ``no_embed_class=True`` layout (DeiT III).

    Raises:
        ValueError: a ``cls_token`` / ``reg_token`` / ``dist_token`` in one and not the other, another register
            count, or the other ``pos_embed`` layout; the message names the key.
    """
    want = timm_vit.state_dict()
    for key, what in (("cls_token", "a class token"), ("reg_token", "register tokens, timm reg_tokens"),
                      ("dist_token", "a distillation token, timm's DeiT VisionTransformerDistilled")):
        if key in sd and key not in want:
            raise ValueError(f"pretrained weights have {key} ({what}), which this ViT does not have: "
                             "it cannot start from them")
        if key in want and key not in sd:
            raise ValueError(f"pretrained weights lack {key} ({what}), which this ViT has: "
                             "it cannot start from them")
    if "reg_token" in sd and sd["reg_token"].shape[1] != want["reg_token"].shape[1]:
        raise ValueError(f"pretrained reg_token has {sd['reg_token'].shape[1]} register tokens, "
                         f"the model {want['reg_token'].shape[1]}")
    prefix = int(getattr(timm_vit, "num_prefix_tokens", 0))
    if "pos_embed" not in sd or "pos_embed" not in want or getattr(timm_vit, "no_embed_class", False):
        return
    n = sd["pos_embed"].shape[1]
    if n == want["pos_embed"].shape[1] and old_grid_size is None:
        return  # nothing to resample; a non-square grid cannot be told from a square one here
    if old_grid_size is not None:
        if n - prefix != old_grid_size[0] * old_grid_size[1]:
            raise ValueError(f"pretrained pos_embed has {n} rows, not the model's {prefix} prefix row(s) plus the "
                             f"{old_grid_size[0]} x {old_grid_size[1]} grid of old_grid_size")
        return
    side, side_all = math.isqrt(max(n - prefix, 0)), math.isqrt(n)
    if prefix and side * side != n - prefix and side_all * side_all == n:
        # A square count only without the prefix rows: most likely timm's no_embed_class
        # layout (DeiT III), which would be split at the wrong row.
        raise ValueError(
            f"pretrained pos_embed has {n} rows, not {prefix} prefix row(s) plus a square grid: with no prefix "
            "rows (timm no_embed_class=True, e.g. DeiT III) this ViT cannot start from it; if it is a "
            "non-square grid, give old_grid_size=(rows, cols)")


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """Patch-projection kernel ``(O, I, P, P)`` refitted to ``in_chans`` input channels.

    As timm's ``adapt_input_conv(in_chans, weight, base_chans=I)`` (only recent timm has
    ``base_chans``; the default 3 would leave gray weights unchanged for an RGB model): one channel
    sums the kernels; more repeat them cyclically, scaled by ``I / in_chans`` so that an image with
    equal channels gives the same projection.

    Raises:
        ValueError: ``in_chans`` below 1, or ``weight`` not 4-D.
    """
    if in_chans < 1 or weight.ndim != 4:
        raise ValueError(f"cannot adapt a patch kernel of shape {tuple(weight.shape)} to {in_chans} channels")
    chans = weight.shape[1]
    if in_chans == chans:
        return weight
    w = weight.float()  # half-precision weights: sum in float32
    if in_chans == 1:
        w = w.sum(1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / chans), 1, 1)[:, :in_chans] * (chans / in_chans)
    return w.to(weight.dtype)


def fit_timm_state_dict(
    state_dict: dict[str, Tensor], timm_vit: nn.Module, old_grid_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Adapt a timm ViT state dict to the shapes of the timm ViT ``timm_vit`` (timm names kept).

    The position embedding is resampled to the new patch grid by :func:`resample_pos_embed`
    (from ``old_grid_size``, default square); timm's ``checkpoint_filter_fn`` resamples the
    patch kernel to a new patch size; the input projection is
    adapted to the channel count (timm ``adapt_input_conv`` from the checkpoint's count: RGB ->
    gray sums the kernels, gray -> RGB (any C -> more) repeats them divided by new / old, so a
    gray image repeated over the channels gives the checkpoint's features); a
    head of another class count, or any head when the model has none, is dropped (the model keeps
    its fresh head). Every other weight must fit: one the model has no place for is an error, not
    skipped, since the model would then compute something else than the checkpoint.

    Raises:
        ValueError: a weight the model lacks (layer scale ``blocks.N.ls1.gamma``, QK-norm
            ``attn.q_norm``, ``reg_token``, ``attn_pool``, ...), a ``pos_embed`` of another token
            layout (timm ``no_embed_class``), or a tensor that does not fit or is missing; the
            message names it.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter

    want = timm_vit.state_dict()
    key = "patch_embed.proj.weight"
    for wrapper in ("state_dict", "model"):  # before the resampling below, which looks for pos_embed
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    sd = dict(state_dict)
    if key in sd and sd[key].ndim == 4 and sd[key].shape[1] != want[key].shape[1]:
        sd[key] = adapt_input_channels(sd[key], want[key].shape[1])
    depth = sum(1 for k in want if re.fullmatch(r"blocks\.\d+\.norm1\.weight", k))
    have = sum(1 for k in sd if re.fullmatch(r"blocks\.\d+\.norm1\.weight", k))
    if have > depth:  # dropping blocks silently would fine-tune a different network than the one named
        raise ValueError(f"pretrained weights have {have} blocks, the model has {depth}: set n_layers to {have}")
    _check_token_layout(sd, timm_vit, old_grid_size)
    prefix = 0 if getattr(timm_vit, "no_embed_class", False) else timm_vit.num_prefix_tokens
    if "pos_embed" in sd and _resample_wanted(
            sd["pos_embed"], want["pos_embed"].shape[1], timm_vit.patch_embed.grid_size, prefix, old_grid_size):
        # Here rather than in timm's filter, which can only assume a square source grid.
        sd["pos_embed"] = resample_pos_embed(
            sd["pos_embed"], tuple(timm_vit.patch_embed.grid_size), prefix, old_grid_size,
        )
    # Kept out of timm's filter: it would resample again, guessing the grid from its default
    # 224-pixel input, whenever the token counts match but the grids do not.
    pos_embed = sd.pop("pos_embed", None)
    filtered = timm_filter(sd, timm_vit)  # timm's filter drops an old pre-logits layer
    if pos_embed is not None:
        filtered["pos_embed"] = pos_embed
    out = {}
    for k, v in filtered.items():
        if k not in want:
            if k.startswith("head."):  # the model has no head (num_classes=0): it wants the features
                continue
            # Any other weight is part of the network (layer scale, QK-norm, ...): without it the
            # model would compute something else than the checkpoint it claims to start from.
            raise ValueError(f"pretrained weights have {k}{_feature_hint(k)}, which this ViT does not have: "
                             "it cannot start from them")
        if v.shape != want[k].shape:
            if k.startswith("head."):
                continue
            raise ValueError(
                f"pretrained {k} has shape {tuple(v.shape)}, the model needs {tuple(want[k].shape)}: "
                "set the ViT size (or timm_model) to the checkpoint's"
            )
        out[k] = v
    missing = [k for k in want if k not in out and not k.startswith("head.")]
    if missing:
        raise ValueError(f"pretrained weights lack {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def load_timm_checkpoint(
    model: nn.Module, source: str | Path | dict[str, Tensor], old_grid_size: tuple[int, int] | None = None,
) -> None:
    """Load timm ViT weights (a file, see :func:`read_timm_checkpoint`, or a state dict) into
    ``model``, ours or a timm ``VisionTransformer``, for fine-tuning: fitted to its image size,
    patch size, channels and classes by :func:`fit_timm_state_dict` (``old_grid_size``: the
    checkpoint's patch grid, default square), then (ours) converted by :func:`checkpoint_filter_fn`.

    Raises:
        FileNotFoundError, ValueError: the file is missing / unreadable, or a tensor does not fit;
            ValueError for a ``model`` with a conv stem (hybrid), which timm ViT weights cannot fill.
    """
    refuse_stem(model)
    sd = source if isinstance(source, dict) else read_timm_checkpoint(source)
    ours = isinstance(model, VisionTransformer)
    sd = fit_timm_state_dict(sd, timm_twin(model) if ours else model, old_grid_size)
    if ours:
        # Already at the model's grid: the filter must not take it for a square one again.
        sd = checkpoint_filter_fn(sd, model, old_grid_size=tuple(model.patch_embed.grid_size))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise ValueError(f"pretrained weights do not fit the ViT: {bad[:5]}")
