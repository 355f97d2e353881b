"""ViT patch embedding with a CLS token (Dosovitskiy et al. 2020, §3.1, Eq. 1)."""

from __future__ import annotations

import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..core.dropout import Dropout


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


class PatchEmbedding(nn.Module):
    """``z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos`` (ViT Eq. 1).

    The image is cut into ``P x P`` patches (einops), each flattened in ``(C, P, P)`` order and
    linearly projected to ``D``; a learnable CLS token is prepended and a learned position
    embedding added. The flatten order equals a stride-``P`` convolution's weight layout, so a
    timm ``patch_embed.proj`` conv weight ``(D, C, P, P)`` reshapes directly into ``proj.weight``.
    When the input size differs from ``img_size`` the grid part of the position embedding is
    resampled bicubically (ViT §3.2, "2D interpolation of the pre-trained position embeddings").

    With a ``stem`` (hybrid ViT, §3.1) the patches are cut from the stem's feature map instead of
    the image: ``P`` then counts feature-map cells (``P = 1``: one token per cell, the paper's
    special case), and one token covers ``stride = stem.stride * P`` pixels a side.

    Args:
        img_size: training image size ``(H, W)`` (int for square).
        patch_size: patch side ``P``.
        in_chans: image channels ``C``.
        d_model: width ``D``.
        class_token: prepend a CLS token (``num_prefix_tokens`` = 1), else none.
        pos_dropout: dropout after adding positions.
        stem: a CNN ``(B, C, H, W) -> (B, C', H/s, W/s)`` with ``out_chans`` (``C'``) and
            ``stride`` (``s``) attributes, such as :class:`~tx_suite.frontends.ConvStem`;
            ``None`` = patches of the raw image.

    Shapes: ``(B, C, H, W) -> (B, num_prefix_tokens + (H/S)(W/S), D)``, ``S`` = :attr:`stride`.

    Raises:
        ValueError: image sides not divisible by :attr:`stride` or wrong channel count.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        d_model: int = 768,
        class_token: bool = True,
        pos_dropout: float = 0.0,
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.stem = stem
        #: pixels per token side: the stem's downsampling times the patch side
        self.stride = patch_size * (stem.stride if stem is not None else 1)
        self._check_size(*self.img_size)
        self.grid_size = (self.img_size[0] // self.stride, self.img_size[1] // self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = 1 if class_token else 0
        feature_chans = stem.out_chans if stem is not None else in_chans
        self.proj = nn.Linear(feature_chans * patch_size * patch_size, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.num_patches, d_model))
        self.pos_drop = Dropout(pos_dropout)
        # timm's ViT init for positions (truncated N(0, 0.02)) and CLS (near zero). The projection
        # is truncated N(0, 0.02) like timm's linear layers; timm's own patch conv keeps PyTorch's
        # default init and the ViT paper's code uses LeCun normal (recorded results used this one).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def _check_size(self, h: int, w: int) -> None:
        s = self.stride
        if h % s or w % s:
            what = f"patch_size={s}" if self.stem is None else f"stem stride x patch_size = {s}"
            raise ValueError(f"image size {h}x{w} is not divisible by {what}")

    def pos_embed_for(self, grid_size: tuple[int, int]) -> Tensor:
        """Position embedding ``(1, prefix + gh * gw, D)`` for a patch grid, resampled if needed."""
        if grid_size == self.grid_size:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, new_size=list(grid_size), old_size=list(self.grid_size),
            num_prefix_tokens=self.num_prefix_tokens,
        )

    def forward(self, images: Tensor) -> Tensor:
        b, c, h, w = images.shape
        if c != self.in_chans:
            raise ValueError(f"expected {self.in_chans}-channel images, got {c} channels")
        self._check_size(h, w)
        p = self.patch_size
        if self.stem is not None:
            images = self.stem(images)  # (B, C, H, W) -> (B, C', H/s, W/s)
        # (B, C, H, W) -> (B, N, C*P*P), patches in raster order
        x = rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p)
        x = self.proj(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed_for((h // self.stride, w // self.stride)))
