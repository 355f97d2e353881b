"""Emoji: real 32 x 32 images with human-written names (``data/emoji``, see ``data/README.md``).

Each emoji of ``emoji.json`` (and each of its skin-tone variations) is an image in two vendors'
sprite sheets (Twemoji by Twitter, Noto Emoji by Google). Cell ``(x, y)`` is the 32 x 32 RGBA
image at pixel ``(34 x + 1, 34 y + 1)``; it is composited on white. The caption is the lower-cased
Unicode name plus, for variations, the skin-tone words as in CLDR names
("father christmas: medium-dark skin tone").

Held-out emoji (for likelihood measurement) are chosen by a hash of the base name, so the choice
is stable when the data or the other settings change, and all variations and both vendors of a
held-out emoji are held out together, so no variation of a held-out emoji leaks into training.
Distinct emoji that a vendor draws alike are not grouped: with the defaults
(``heldout_fraction`` 0.1, seed 0) two validation images on the Twitter sheet, "family: woman,
boy, boy" and "family: man, man, girl", are pixel-identical to training images of other
"family" sequences (Twemoji draws them with one generic glyph; Google's sheet has no such pair).
Kept, because the recorded emoji results used this split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tx_suite.data.checksums import verify

VENDORS = ("twitter", "google")
SPLITS = ("train", "val", "test", "heldout", "all")
CELL, PITCH = 32, 34
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


@dataclass(frozen=True)
class EmojiRecord:
    """One image cell: ``caption``, its base emoji ``name``, ``category`` and sheet cell."""

    caption: str
    name: str
    category: str
    sheet_x: int
    sheet_y: int


def skin_tone_words(key: str) -> str:
    """``"1F3FB-1F3FF"`` -> ``"light skin tone, dark skin tone"``; an identical pair is said once."""
    tones = [SKIN_TONES[k] for k in key.split("-")]
    if len(set(tones)) == 1:
        tones = tones[:1]
    return ", ".join(tones)


@lru_cache(maxsize=2)
def load_records(root: str = "data") -> tuple[EmojiRecord, ...]:
    """All 3,786 image cells of ``emoji.json`` in file order (bases then their variations).

    Raises:
        FileNotFoundError / ChecksumError: ``emoji.json`` missing or corrupt.
    """
    with open(verify(root, "emoji/emoji.json"), encoding="utf-8") as f:
        entries = json.load(f)
    records = []
    for e in entries:
        name = e["name"].lower()
        records.append(EmojiRecord(name, name, e["category"], e["sheet_x"], e["sheet_y"]))
        for key, var in sorted((e.get("skin_variations") or {}).items()):
            records.append(EmojiRecord(f"{name}: {skin_tone_words(key)}", name, e["category"],
                                       var["sheet_x"], var["sheet_y"]))
    return tuple(records)


@lru_cache(maxsize=2)
def load_sheet(root: str, vendor: str) -> np.ndarray:
    """A vendor's sprite sheet as ``(H, W, 4)`` uint8 RGBA.

    Raises:
        ValueError: unknown vendor. FileNotFoundError / ChecksumError: sheet missing or corrupt.
    """
    if vendor not in VENDORS:
        raise ValueError(f"emoji vendor must be one of {VENDORS}, got {vendor!r}")
    path = verify(root, f"emoji/sheet-{vendor}-32.png")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def cell_image(sheet: np.ndarray, x: int, y: int) -> torch.Tensor:
    """Cell ``(x, y)`` composited on white: ``(3, 32, 32)`` float in [0, 1].

    Alpha compositing "over" a white background (Porter and Duff 1984): ``a * rgb + (1 - a)``.
    """
    rgba = torch.from_numpy(sheet[PITCH * y + 1: PITCH * y + 1 + CELL,
                                  PITCH * x + 1: PITCH * x + 1 + CELL].copy()).float() / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return (rgb * alpha + (1.0 - alpha)).permute(2, 0, 1).contiguous()  # (32, 32, 3) -> (3, 32, 32)


def name_score(name: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from a hash of ``(seed, name)``: the emoji's place in the split."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of(name: str, heldout_fraction: float, seed: int = 0) -> str:
    """``"val"`` (score below half the fraction), ``"test"`` (below the fraction) or ``"train"``."""
    score = name_score(name, seed)
    return "val" if score < heldout_fraction / 2 else "test" if score < heldout_fraction else "train"


class EmojiDataset(Dataset):
    """Captioned emoji images.

    Args:
        root: data root holding ``emoji/``.
        split: ``"train"`` (emoji not held out), ``"val"`` and ``"test"`` (the two halves of the
            held-out emoji), ``"heldout"`` (both halves) or ``"all"``.
        vendors: which sprite sheets to draw from (each vendor gives one image per caption).
        heldout_fraction: fraction of base emoji held out (with all their variations).
        seed: seed of the held-out choice.
        skin_tones: include the 1,875 skin-tone variations.

    Items are dicts: ``image`` ``(3, 32, 32)`` float in [0, 1], ``caption`` (str),
    ``vendor`` (long scalar, index into ``VENDORS``).

    Raises:
        ValueError: unknown split or vendor, a vendor listed twice, ``heldout_fraction`` outside
            (0, 1), or an empty selection.
    """

    def __init__(self, root: str = "data", split: str = "train",
                 vendors: Sequence[str] = VENDORS, heldout_fraction: float = 0.1, seed: int = 0,
                 skin_tones: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if len(set(vendors)) != len(vendors):  # each would add every image again
            raise ValueError(f"emoji vendors must not repeat, got {list(vendors)!r}")
        if not 0 < heldout_fraction < 1:  # 0 leaves val/test empty, 1 the training split
            raise ValueError(f"emoji heldout_fraction must be in (0, 1), got {heldout_fraction}")
        records = [r for r in load_records(root) if skin_tones or r.caption == r.name]
        wanted = {"heldout": ("val", "test"), "all": ("train", "val", "test")}.get(split, (split,))
        records = [r for r in records if split_of(r.name, heldout_fraction, seed) in wanted]
        if not records or not vendors:
            raise ValueError(f"empty emoji selection (split={split!r}, vendors={list(vendors)!r})")
        self.records = records
        self.vendors = list(vendors)
        # 3,786 cells x 2 vendors x 3 KiB: small enough to decode once and keep as uint8.
        images = []
        for v in self.vendors:
            sheet = load_sheet(root, v)
            images.append(torch.stack([cell_image(sheet, r.sheet_x, r.sheet_y) for r in records]))
        self.images = (torch.cat(images) * 255).round().to(torch.uint8)  # (V * N, 3, 32, 32)

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, index: int) -> str:
        return self.records[index % len(self.records)].caption

    def __getitem__(self, index: int) -> dict:
        vendor = VENDORS.index(self.vendors[index // len(self.records)])
        return {
            "image": self.images[index].float() / 255.0,
            "caption": self.caption(index),
            "vendor": torch.tensor(vendor),
        }
