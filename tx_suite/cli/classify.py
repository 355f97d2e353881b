"""``tx-suite classify``: image files in, top-k labels with probabilities out.

    tx-suite classify --ckpt runs/mnist_vit/<run>/checkpoints/best.ckpt digit.png other.png --topk 3
    tx-suite classify --ckpt mnist_vit:best digit.png     # the newest run of an experiment

Images go through the checkpoint's own preprocessing (size, channels, normalisation saved by
the task). Rules for files that do not match the model:

- **Size**: an image of another size is resized to the model's (bicubic, antialiased, as the datamodule resizes; both sides,
  so a non-square image is stretched) with a note on stderr; ``--no_resize`` makes it an error.
- **Channels**: an image with another channel count (e.g. RGB for the 1-channel MNIST model) is
  an error; ``--convert`` converts it (PIL ``convert("L")`` / ``convert("RGB")``). Palette and
  1-bit images are expanded first (to RGB(A) / L; a palette of grays to L).
- **Unreadable** files (missing, not an image, truncated, larger than PIL's decompression-bomb
  limit ``PIL.Image.MAX_IMAGE_PIXELS`` twice over) are errors.

Each error is one line on stderr naming the file; the other images are still classified. The
exit status is 0 if all images were classified, 1 if some were not, 2 for a bad checkpoint or
command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tx_suite.utils.option_parser import OptionParser
from tx_suite.utils.runs import default_runs_dir

PROG = "tx-suite classify"
MODE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
CHANNEL_MODES = {1: "L", 3: "RGB"}


class ImageError(ValueError):
    """An input image cannot be fed to the model (the message names the file and the reason)."""


def load_image(path: str | Path, img_size: int, in_chans: int, resize: bool = True, convert: bool = False):
    """Read ``path`` as a PIL image of mode ``L`` or ``RGB`` and side ``img_size``.

    Returns:
        (image, note): the image, and a note (str) when it was resized or converted, else None.

    Raises:
        ImageError: unreadable file (also one PIL refuses as a decompression bomb), wrong
            channel count (without ``convert``; with it, an alpha band that is not opaque) or
            wrong size (without ``resize``).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            # As viewers show it: a phone's JPEG stores its pixels sideways with an EXIF
            # orientation tag, and was classified as stored
            img = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a directory without image files ({', '.join(IMAGE_SUFFIXES)})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as e:  # an Exception of its own, not an OSError
        raise ImageError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    notes = []
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        bands = img.split()[:3]
        gray = bands[0].tobytes() == bands[1].tobytes() == bands[2].tobytes()
        if img.mode == "RGB" and gray and in_chans == 1:
            # A palette of grays (how some tools save gray PNGs) is a gray image; for an RGB model
            # it stays RGB rather than being refused as "1 channel" without --convert.
            img = bands[0]
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode not in MODE_CHANNELS:
        raise ImageError(f"{path}: unsupported pixel format {img.mode!r} (use 8-bit gray or RGB)")
    chans = MODE_CHANNELS[img.mode]
    if chans != in_chans:
        if not convert:
            raise ImageError(
                f"{path}: image has {chans} channel(s) ({img.mode}), the model takes {in_chans} "
                f"({CHANNEL_MODES[in_chans]}); pass --convert to convert it"
            )
        if "A" in img.getbands() and img.getchannel("A").getextrema()[0] < 255:
            # Converting drops the alpha band: what is drawn on a transparent canvas would keep
            # only its colour values (a black digit on transparency becomes an all-black image).
            raise ImageError(f"{path}: has transparent pixels, which --convert cannot flatten without knowing the "
                             "background of the training images; flatten it onto that background first")
        notes.append(f"converted {img.mode} -> {CHANNEL_MODES[in_chans]}")
        img = img.convert(CHANNEL_MODES[in_chans])
    if img.size != (img_size, img_size):
        if not resize:
            raise ImageError(
                f"{path}: image is {img.size[0]}x{img.size[1]}, the model takes {img_size}x{img_size} "
                "(drop --no_resize to resize it)"
            )
        notes.append(f"resized {img.size[0]}x{img.size[1]} -> {img_size}x{img_size}")
        img = img.resize((img_size, img_size), Image.Resampling.BICUBIC)  # as the eval transform (T.Resize on PIL)
    return img, ("; ".join(notes) or None)


def classify(model, images: list, topk: int = 3, batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """Top-``topk`` (label, probability) per PIL image, with the checkpoint's preprocessing.

    Args:
        model: an :class:`~tx_suite.tasks.classification.ImageClassification` with ``meta``.
        images: PIL images already of the model's size and channels (see :func:`load_image`).
    """
    import torch

    from tx_suite.data.vision_transforms import build_eval_transform

    meta = model.meta
    tf = build_eval_transform(meta["img_size"], meta["mean"], meta["std"])
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):  # a directory may hold thousands of images
            x = torch.stack([tf(img) for img in images[start:start + batch_size]])  # (n, C, H, W)
            chunks.append(model(x.to(model.device)).float().softmax(-1).cpu())  # (n, num_classes)
    probs = torch.cat(chunks)  # (N, num_classes)
    k = min(topk, probs.shape[-1])
    top = probs.topk(k, dim=-1)
    classes = meta["classes"]
    return [
        [(classes[i], p) for i, p in zip(idx.tolist(), val.tolist())]
        for idx, val in zip(top.indices, top.values)
    ]


#: File name endings read from a directory argument (PIL reads more; name those files directly).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_dirs(paths: Sequence[str]) -> list[str]:
    """``paths`` with each directory replaced by its image files (by suffix, sorted by name; not
    recursive). A directory without any stays, so that it gets its one-line error."""
    out: list[str] = []
    for path in paths:
        p = Path(path)
        # A dangling link is listed too, for its one-line error (is_file() is False for it).
        found = sorted(str(f) for f in p.iterdir() if (f.is_file() or (f.is_symlink() and not f.exists()))
                       and f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else []
        out.extend(found or [path])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = OptionParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True,
                   help="Lightning checkpoint of an image-classification run: a file or EXPERIMENT:best|last")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or directories of them")
    p.add_argument("--topk", "--top_k", type=int, default=3, help="labels to print per image (default 3)")
    p.add_argument("--no_resize", dest="resize", action="store_false", help="error on a size mismatch")
    p.add_argument("--convert", action="store_true", help="convert images to the model's channel count")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--runs_dir", default=default_runs_dir(),
                   help="root of the run directories for EXPERIMENT:best (default: $TX_SUITE_RUNS_DIR or runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        print(f"{PROG}: error: --topk must be >= 1", file=sys.stderr)
        return 2
    from tx_suite.cli.devices import check_device
    from tx_suite.tasks.classification import load_classifier
    from tx_suite.utils.runs import resolve_checkpoint

    device_error = check_device(args.device)
    if device_error:
        print(f"{PROG}: error: {device_error}", file=sys.stderr)
        return 2

    try:
        model = load_classifier(resolve_checkpoint(args.ckpt, args.runs_dir, kind="classifier",
                                                   hint="train it first: tx-suite fit --config experiments/vision/{name}.yaml"))
    except (FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    model.to(args.device)
    meta = model.meta
    if not meta:
        print(f"{PROG}: error: {args.ckpt} has no data metadata (classes, size); "
              "it was not saved by a run with a datamodule", file=sys.stderr)
        return 2
    loaded, failed = [], 0
    for path in expand_dirs(args.images):
        try:
            img, note = load_image(path, meta["img_size"], meta["in_chans"], args.resize, args.convert)
        except ImageError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        if note:
            print(f"{PROG}: note: {path}: {note}", file=sys.stderr)
        loaded.append((path, img))
    if loaded:
        results = classify(model, [img for _, img in loaded], args.topk)
        for (path, _), top in zip(loaded, results):
            if args.json:
                print(json.dumps({"file": path, "top": [{"label": c, "prob": round(p, 6)} for c, p in top]}))
            else:
                print(f"{path}: " + "  ".join(f"{c} ({p:.4f})" for c, p in top))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
