"""Image transforms for classification: train-time augmentation and eval preprocessing.

Augmentation is assembled from torchvision and timm, set by a plain ``augment`` dict in the
data config (keys below; unknown keys are an error). Order, as in timm's ``create_transform``:
geometric (crop, flip, affine) -> policy (AutoAugment / RandAugment / AugMix) -> tensor +
normalise -> RandomErasing (which works on normalised tensors).

Keys of ``augment`` (all optional; absent = off):

- ``random_crop_padding`` (int, px): ``RandomCrop(img_size, padding=p)``, the CIFAR standard (4).
- ``hflip`` (float, probability): ``RandomHorizontalFlip(p)``. Never for digits.
- ``affine_degrees`` (float, deg), ``affine_translate`` (float, fraction of the side),
  ``affine_scale`` ([lo, hi]), ``affine_shear`` (float, deg): one ``RandomAffine``; the MNIST
  recipe of asnelt/mnistvit.
- ``auto_augment`` (str): ``"cifar10"``, ``"imagenet"`` or ``"svhn"`` for torchvision's
  ``AutoAugment`` policies (Cubuk et al. 2019, the CIFAR-10 policy is what omihub777/ViT-CIFAR
  uses), or a timm config string: ``"rand-m9-mstd0.5-inc1"`` (RandAugment, Cubuk et al. 2020),
  ``"original-mstd0.5"`` / ``"v0"`` (timm AutoAugment), ``"augmix-m5-w4-d2"`` (AugMix).
- ``random_erasing`` (float, probability): timm ``RandomErasing`` (Zhong et al. 2020),
  per-pixel normal noise, as in DeiT.

Mixup / CutMix act on batches and labels, so they live in the task
(:class:`tx_suite.tasks.classification.ImageClassification`, ``mixup`` argument).
"""

from __future__ import annotations

import math

from collections.abc import Sequence

from PIL import ImageOps
from torchvision import transforms as T

AUGMENT_KEYS = (
    "random_crop_padding",
    "hflip",
    "affine_degrees",
    "affine_translate",
    "affine_scale",
    "affine_shear",
    "auto_augment",
    "random_erasing",
)
TORCHVISION_POLICIES = {
    "cifar10": T.AutoAugmentPolicy.CIFAR10,
    "imagenet": T.AutoAugmentPolicy.IMAGENET,
    "svhn": T.AutoAugmentPolicy.SVHN,
}


def _is_number(value: object) -> bool:
    """A finite int or float (``.inf`` in YAML is a float; ``int(inf)`` raises OverflowError)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: What each augment key takes (a check, and the wording of its error).
_AUGMENT_TYPES = {
    "random_crop_padding": ("a whole number of pixels >= 0", lambda v: _is_number(v) and v >= 0 and v == int(v)),
    "hflip": ("a probability in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "affine_degrees": ("a number of degrees >= 0", lambda v: _is_number(v) and v >= 0),
    "affine_translate": ("a fraction in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "affine_scale": ("a pair [min, max]", lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                     and all(_is_number(x) and x > 0 for x in v)),
    "affine_shear": ("a number of degrees >= 0", lambda v: _is_number(v) and v >= 0),
    "auto_augment": ("a policy name (string)", lambda v: isinstance(v, str)),
    "random_erasing": ("a probability in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
}


def check_augment(augment: dict | None) -> dict:
    """Return ``augment`` as a dict, rejecting unknown keys and values of the wrong kind.

    Raises:
        ValueError: a key is not one of :data:`AUGMENT_KEYS` (the message lists the valid ones), or
            its value is not what the key takes (the message names the key), or an
            ``auto_augment`` string timm cannot parse; ``None`` = off.
    """
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown augment key(s) {unknown}; valid keys: {list(AUGMENT_KEYS)}")
    for key, value in augment.items():
        what, ok = _AUGMENT_TYPES[key]
        if value is not None and not ok(value):
            raise ValueError(f"augment.{key} must be {what}, got {value!r}")
    if augment.get("auto_augment"):
        try:  # now, not at setup: timm rejects a malformed string with a bare AssertionError
            _policy(augment["auto_augment"], 32, (0.5,))
        except (AssertionError, ValueError, KeyError, IndexError) as e:
            if isinstance(e, ValueError):
                raise ValueError(f"augment.auto_augment: {e}") from None
            raise ValueError(f"augment.auto_augment {augment['auto_augment']!r}: timm cannot parse it "
                             f"({str(e) or type(e).__name__}); {_POLICY_HINT}") from None
    return augment


def _posterize(img, bits_to_keep: int, **_):
    """timm's ``posterize`` that also takes 0 bits: a black image, as TF's ``(x >> 8) << 8`` and
    older Pillow gave. timm's levels reach 0 (``inc1`` at magnitude 10, which ``mstd`` draws now
    and then); Pillow 13 raises ``ValueError`` there, which killed a training run at random."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _zero_bit_posterize_ok(transform):
    """Swap :func:`_posterize` into the Posterize ops of a timm RandAugment / AutoAugment / AugMix."""
    ops = getattr(transform, "ops", None) or [op for sub in getattr(transform, "policy", []) for op in sub]
    for op in ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return transform


_POLICY_HINT = (f"use one of {sorted(TORCHVISION_POLICIES)} or a timm string such as 'rand-m9-mstd0.5-inc1', "
                "'original-mstd0.5', 'augmix-m5-w4-d2'")


def _policy(name: str, img_size: int, mean: Sequence[float]):
    """An AutoAugment-family transform on PIL images from a policy name or timm config string."""
    if name in TORCHVISION_POLICIES:
        return T.AutoAugment(TORCHVISION_POLICIES[name])
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    # Fill with the dataset mean (0..255) where ops leave empty pixels, as timm's create_transform.
    fill = tuple(round(255 * m) for m in mean)
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": fill[0] if len(fill) == 1 else fill}
    if name.startswith("rand"):
        return _zero_bit_posterize_ok(rand_augment_transform(name, hparams))
    if name.startswith("augmix"):
        return _zero_bit_posterize_ok(augment_and_mix_transform(name, hparams))
    if name.split("-")[0] in ("v0", "v0r", "original", "originalr"):
        return _zero_bit_posterize_ok(auto_augment_transform(name, hparams))
    raise ValueError(f"unknown auto_augment {name!r}: {_POLICY_HINT}")


def build_train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: dict | None = None,
    resize: bool = False,
) -> T.Compose:
    """Train transform: PIL image -> normalised float tensor (C, img_size, img_size).

    Args:
        img_size: output side in pixels.
        mean, std: per-channel normalisation (one value per channel).
        augment: see the module docstring.
        resize: resize the (native-size) input to ``img_size`` first (bicubic), e.g. CIFAR at 224
            for a pretrained ViT.

    Raises:
        ValueError: unknown augment key or policy.
    """
    augment = check_augment(augment)
    ops: list = []
    if resize:
        ops.append(T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True))
    if augment.get("random_crop_padding"):
        ops.append(T.RandomCrop(img_size, padding=int(augment["random_crop_padding"])))
    if augment.get("hflip"):
        ops.append(T.RandomHorizontalFlip(float(augment["hflip"])))
    affine = {k: augment.get(f"affine_{k}") for k in ("degrees", "translate", "scale", "shear")}
    if any(affine.values()):
        t = affine["translate"]
        ops.append(
            T.RandomAffine(
                degrees=float(affine["degrees"] or 0.0),
                translate=(float(t), float(t)) if t else None,
                scale=tuple(affine["scale"]) if affine["scale"] else None,
                shear=float(affine["shear"]) if affine["shear"] else None,
                interpolation=T.InterpolationMode.BILINEAR,
            )
        )
    if augment.get("auto_augment"):
        ops.append(_policy(str(augment["auto_augment"]), img_size, mean))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if augment.get("random_erasing"):
        from timm.data.random_erasing import RandomErasing

        ops.append(RandomErasing(float(augment["random_erasing"]), mode="pixel", device="cpu"))
    return T.Compose(ops)


def build_eval_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], resize: bool = False
) -> T.Compose:
    """Eval transform: PIL image -> normalised float tensor (C, img_size, img_size), no randomness."""
    ops: list = []
    if resize:
        ops.append(T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)
