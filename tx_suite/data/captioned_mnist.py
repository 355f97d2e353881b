"""Captioned MNIST scenes: real MNIST digits composited on a 32 x 32 RGB canvas.

Each scene draws one real digit (from the bundled IDX files ``data/MNIST/raw/*.gz``) resized to
a size, tinted with a colour and pasted at a position (with +-1 px jitter) on black; its caption
comes from :mod:`tx_suite.data.captions`. Scenes are a pure function of ``(seed, split, index)``.

Splits follow the issue: ``train`` scenes use MNIST training digits, ``val`` and ``test`` scenes
use MNIST test digits (the first and the second half of them), so no digit image is shared
between training and evaluation. ``combos`` picks which attribute combinations may appear:
``"seen"`` (never a held-out (digit, colour) pair), ``"heldout"`` (only those) or ``"all"``.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tx_suite.data.captions import (
    COLOURS,
    DEFAULT_HELDOUT_PAIRS,
    POSITIONS,
    SIZE_NAMES,
    SIZES,
    TEMPLATES,
    Attributes,
    all_combinations,
    caption,
    split_combinations,
)
from tx_suite.data.checksums import verify

CANVAS = 32
_SPLITS = {"train": 0, "val": 1, "test": 2}
_COMBOS = ("seen", "heldout", "all")
_COLOUR_TABLE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (n_colours, 3)


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (LeCun et al. 1998 MNIST format): big-endian dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


@lru_cache(maxsize=4)
def load_mnist(root: str = "data", train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images ``(N, 28, 28)`` uint8 and labels ``(N,)`` long from ``root/MNIST/raw``.

    Raises:
        FileNotFoundError: a file is missing.
        ChecksumError: a file does not match its SHA-256 in ``tx_suite.data.checksums``.
    """
    prefix = "train" if train else "t10k"
    images = _read_idx(verify(root, f"MNIST/raw/{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(verify(root, f"MNIST/raw/{prefix}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def render_scene(digit_image: torch.Tensor, attrs: Attributes, jitter: tuple[int, int] = (0, 0),
                 canvas: int = CANVAS) -> torch.Tensor:
    """Composite one MNIST digit into an RGB scene.

    Args:
        digit_image: ``(28, 28)`` uint8 MNIST image (white digit on black).
        attrs: colour, size and position (``attrs.digit`` is not used: it is the image's label).
        jitter: ``(dx, dy)`` pixel offset added to the position, clamped to the canvas.
    Returns:
        ``(3, canvas, canvas)`` float image in [0, 1]: ``intensity * colour`` on black.
    """
    side = SIZES[SIZE_NAMES[attrs.size]]
    # antialias=True: a box-like filter when shrinking, so thin strokes do not alias away.
    glyph = F.interpolate(digit_image[None, None].float() / 255.0, size=(side, side),
                          mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp(0, 1)
    fx, fy = list(POSITIONS.values())[attrs.position]
    room = canvas - side
    x = min(max(round(fx * room) + jitter[0], 0), room)
    y = min(max(round(fy * room) + jitter[1], 0), room)
    image = torch.zeros(3, canvas, canvas)
    image[:, y:y + side, x:x + side] = glyph[None] * _COLOUR_TABLE[attrs.colour][:, None, None]
    return image


class CaptionedMNIST(Dataset):
    """Deterministic Captioned MNIST scenes.

    Args:
        root: data root holding ``MNIST/raw``.
        split: ``"train"`` (MNIST training digits), ``"val"`` (MNIST test digits 0-4999) or
            ``"test"`` (MNIST test digits 5000-9999).
        combos: ``"seen"``, ``"heldout"`` or ``"all"`` attribute combinations.
        size: number of scenes.
        seed: scenes are a pure function of ``(seed, split, combos, index)`` and ``heldout_pairs``.
        heldout_pairs: the (digit, colour) pairs never seen in training (see
            :func:`tx_suite.data.captions.split_combinations`).
        jitter: maximum position jitter in pixels.
        templates: caption template indices to draw from (default: all).

    Items are dicts: ``image`` ``(3, 32, 32)`` float in [0, 1]; ``digit``, ``colour``, ``size``,
    ``position`` (long scalars, indices into :mod:`tx_suite.data.captions` tables);
    ``heldout`` (bool: the (digit, colour) pair is held out); ``caption`` (str).

    Raises:
        ValueError: unknown split or combos, or a split with no combinations.
    """

    def __init__(self, root: str = "data", split: str = "train", combos: str = "seen",
                 size: int = 10000, seed: int = 0,
                 heldout_pairs: Iterable[Sequence] = DEFAULT_HELDOUT_PAIRS, jitter: int = 1,
                 templates: Sequence[int] | None = None):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
        if combos not in _COMBOS:
            raise ValueError(f"combos must be one of {_COMBOS}, got {combos!r}")
        seen, heldout = split_combinations(heldout_pairs)
        self.combinations = {"seen": seen, "heldout": heldout, "all": all_combinations()}[combos]
        if not self.combinations:
            raise ValueError(f"no {combos} combinations with held-out pairs {heldout_pairs!r}")
        self._heldout = {(a.digit, a.colour) for a in heldout}
        images, labels = load_mnist(root, train=split == "train")
        if split != "train":
            half = slice(0, 5000) if split == "val" else slice(5000, 10000)
            images, labels = images[half], labels[half]
        self.images = images
        self.size = size
        self.split = split
        templates = list(range(len(TEMPLATES))) if templates is None else list(templates)

        # Each random field has its own generator, and numpy's Generator draws element by
        # element, so the first n draws do not depend on `size`: scene i is fixed by
        # (seed, split, combos, i) whatever the dataset length, access order or worker count.
        def rng(field: int) -> np.random.Generator:
            return np.random.default_rng([seed, _SPLITS[split], _COMBOS.index(combos), field])

        self.combo_index = rng(0).integers(len(self.combinations), size=size)
        digits = np.array([self.combinations[i].digit for i in self.combo_index], dtype=np.int64)
        by_class = [np.flatnonzero(labels.numpy() == d) for d in range(10)]
        pick = rng(1).random(size)
        self.image_index = np.array([by_class[d][int(p * len(by_class[d]))]
                                     for d, p in zip(digits, pick)], dtype=np.int64)
        self.jitter = rng(2).integers(-jitter, jitter + 1, size=(size, 2))
        self.template = np.asarray(templates)[rng(3).integers(len(templates), size=size)]
        self.synonym = rng(4).integers(6, size=size)  # 6 = lcm of the synonym counts (2, 3)
        self.numeral = rng(5).random(size) < 0.5

    def __len__(self) -> int:
        return self.size

    def attributes(self, index: int) -> Attributes:
        return self.combinations[self.combo_index[index]]

    def caption(self, index: int) -> str:
        return caption(self.attributes(index), int(self.template[index]),
                       int(self.synonym[index]), bool(self.numeral[index]))

    def __getitem__(self, index: int) -> dict:
        attrs = self.attributes(index)
        image = render_scene(self.images[self.image_index[index]], attrs,
                             tuple(int(j) for j in self.jitter[index]))
        return {
            "image": image,
            "digit": torch.tensor(attrs.digit),
            "colour": torch.tensor(attrs.colour),
            "size": torch.tensor(attrs.size),
            "position": torch.tensor(attrs.position),
            "heldout": torch.tensor((attrs.digit, attrs.colour) in self._heldout),
            "caption": self.caption(index),
        }
