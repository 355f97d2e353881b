"""Convolutional stem for hybrid ViTs (Dosovitskiy et al. 2020, §3.1 "Hybrid Architecture").

ViT §3.1: "As an alternative to raw image patches, the input sequence can be formed from feature
maps of a CNN"; the patch embedding is then applied to patches of the feature map, and "as a
special case, the patches can have spatial size 1x1". The stem follows Xiao et al. 2021 ("Early
Convolutions Help Transformers See Better", §3): a short stack of 3x3 convolutions, each followed
by BatchNorm and ReLU, in place of the single large-stride patchify convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class ConvStem(nn.Module):
    """3x3 conv -> BatchNorm -> ReLU, once per entry of ``channels``.

    Args:
        in_chans: input channels ``C``.
        channels: output channels of each convolution (at least one).
        strides: stride of each convolution (same length as ``channels``); default 2 for every
            one, which halves the feature map per convolution as in Xiao et al. 2021.

    Shapes: ``(B, C, H, W) -> (B, channels[-1], H / stride, W / stride)``, ``stride`` being the
    product of ``strides``; ``H`` and ``W`` must be multiples of it (checked by the caller).

    Raises:
        ValueError: empty ``channels``, ``strides`` of another length, or a channel count or
            stride below 1.
    """

    def __init__(self, in_chans: int, channels: Sequence[int], strides: Sequence[int] | None = None) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        strides = [2] * len(channels) if strides is None else [int(s) for s in strides]
        if not channels:
            raise ValueError("a conv stem needs at least one convolution (stem_channels is empty)")
        if len(strides) != len(channels):
            raise ValueError(f"stem_strides has {len(strides)} entries, stem_channels {len(channels)}: give one per conv")
        if min(channels) < 1 or min(strides) < 1:
            raise ValueError(f"stem channels and strides must be >= 1, got channels={channels}, strides={strides}")
        layers: list[nn.Module] = []
        prev = in_chans
        for c, s in zip(channels, strides):
            # No conv bias: the BatchNorm's shift replaces it.
            layers += [nn.Conv2d(prev, c, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            prev = c
        self.convs = nn.Sequential(*layers)
        self.out_chans = prev
        self.stride = math.prod(strides)
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 init for ReLU networks, as torchvision's ResNet.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.convs(images)
