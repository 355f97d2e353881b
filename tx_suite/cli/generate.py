"""``tx-suite generate``: captions in, a PNG grid of generated images out.

Example::

    tx-suite generate --ckpt t2i_mnist:best --caption "a small red seven in the top left" \\
        --caption "top-right: big blue 3" --n 8 --cfg_scale 3 --out samples.png

One row per caption, ``--n`` images per row. ``--ckpt`` and ``--tokenizer`` take a file or
``<experiment>:best|last`` (the newest run under ``<runs_dir>/<experiment>/``). With ``--judge`` (a
Captioned MNIST judge checkpoint) each caption gets ``--candidates`` samples that are re-ranked by
the judge's log-probability of the caption's attributes, and the best ``--n`` are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tx_suite.utils.atomic_write import atomic_open, check_writable
from tx_suite.utils.option_parser import OptionParser
from tx_suite.utils.runs import default_runs_dir

PROG = "tx-suite generate"


def build_parser() -> argparse.ArgumentParser:
    p = OptionParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="text-to-image checkpoint (file or EXPERIMENT:best|last)")
    p.add_argument("--tokenizer", default=None,
                   help="stage-1 VQ-VAE checkpoint (default: the one recorded in --ckpt)")
    p.add_argument("--caption", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--captions_file", type=Path, default=None, help="file with one caption a line ('-': standard input)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="output image grid; its suffix picks the format (.png, .jpg, .webp, .bmp, .gif, .tif; "
                   "default samples.png)")
    p.add_argument("--n", type=int, default=8, help="images per caption, one grid row (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of image tokens (default 1)")
    p.add_argument("--top_k", type=int, default=None, help="sample from the k most likely tokens (default: all)")
    p.add_argument("--top_p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens with this probability mass (default: off)")
    p.add_argument("--cfg_scale", type=float, default=1.0,
                   help="classifier-free guidance scale (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed: each image has its own generator from (seed, its row), so the same seed and caption at the same row give the same image whatever --batch_size (default 0)")
    p.add_argument("--no_cache", action="store_true", help="recompute the prefix at every step")
    p.add_argument("--judge", default=None, help="re-rank with this Captioned MNIST judge checkpoint")
    p.add_argument("--candidates", type=int, default=None,
                   help="samples drawn per caption before re-ranking (default 4 x --n)")
    p.add_argument("--batch_size", type=int, default=64, help="sequences sampled at once (default 64)")
    p.add_argument("--device", default="cpu", help="torch device to sample on, e.g. cpu or cuda (default cpu)")
    p.add_argument("--runs_dir", default=default_runs_dir(),
                   help="root of the run directories for EXPERIMENT:best (default: $TX_SUITE_RUNS_DIR or runs)")
    return p


def read_captions(args: argparse.Namespace) -> list[str]:
    """Captions from ``--caption`` and ``--captions_file`` (lines split on ``\\n`` only, blank lines
    skipped), normalized as translation sources are (a file's byte-order mark or a zero-width space
    would be ``[UNK]``; undecodable bytes become U+FFFD).

    Raises:
        FileNotFoundError: the captions file does not exist. IsADirectoryError: it is a directory.
        ValueError: no captions, or an empty ``--caption``.
    """
    from tx_suite.data.text_normalize import has_undecodable_bytes, input_encoding, normalize_source, split_lines

    captions = [normalize_source(c) for c in args.caption]
    if any(not c for c in captions):  # a file's blank lines are skipped; an explicit one is a mistake
        raise ValueError("--caption is empty (or only spaces): an empty caption is the unconditional "
                         "input that guidance subtracts, not a caption")
    if args.captions_file is not None:
        if str(args.captions_file) == "-":
            data = sys.stdin.buffer.read()
        elif args.captions_file.is_dir():
            raise IsADirectoryError(f"captions file is a directory: {args.captions_file}")
        elif not args.captions_file.is_file():
            raise FileNotFoundError(f"captions file not found: {args.captions_file}")
        else:
            data = args.captions_file.read_bytes()
        if has_undecodable_bytes(data):
            print(f"{PROG}: note: {args.captions_file} is not valid {input_encoding(data).upper()}: its "
                  "undecodable bytes were read as U+FFFD (save it as UTF-8)", file=sys.stderr)
        lines = split_lines(data)
        captions += [c for c in map(normalize_source, lines) if c]
    if not captions:
        raise ValueError("no captions: give --caption TEXT (repeatable) or --captions_file FILE")
    return captions


#: Image formats ``--out`` may name (the file name's suffix picks the format, as in PIL).
OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def run(args: argparse.Namespace) -> dict:
    import torch
    from torchvision.utils import make_grid, save_image

    from tx_suite.cli.devices import check_device
    from tx_suite.decoding.sampling import rerank
    from tx_suite.tasks.text_to_image import load_text_to_image
    from tx_suite.tasks.vqvae import resolve_checkpoint

    captions = read_captions(args)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.candidates is not None and args.judge is None:
        raise ValueError("--candidates needs --judge (the judge re-ranks the candidates)")
    if args.candidates is not None and args.candidates < args.n:
        raise ValueError(f"--candidates ({args.candidates}) must be >= --n ({args.n})")
    if args.out.is_dir() or args.out.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out must be an image file name ending in {', '.join(OUT_SUFFIXES)}, got {args.out}")
    if args.out.suffix.lower() == ".webp":
        from PIL import features

        if not features.check("webp"):
            raise ValueError(f"--out {args.out}: this Pillow was built without WebP; use .png")
    blocking = next((p for p in args.out.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():  # found now, not after sampling
        raise ValueError(f"--out {args.out}: {blocking} is a file, not a directory")
    try:  # before the slow part: an unwritable --out must not cost the samples
        check_writable(args.out)
    except OSError as err:
        raise OSError(f"cannot write --out {args.out}: {err.strerror}") from None
    device_error = check_device(args.device)
    if device_error:
        raise ValueError(device_error)
    judge = None
    if args.judge is not None:  # a wrong file or caption fails here, before the slow part
        from tx_suite.data.captions import parse_caption
        from tx_suite.tasks.judge import load_judge

        judge = load_judge(str(resolve_checkpoint(args.judge, args.runs_dir, kind="judge")))

        for caption in captions:
            try:
                parse_caption(caption)
            except ValueError as err:
                raise ValueError(f"--judge scores Captioned MNIST captions (digit, colour, size, position): {err}") from None
    tokenizer = None if args.tokenizer is None else str(resolve_checkpoint(args.tokenizer, args.runs_dir, kind="VQ-VAE"))
    task = load_text_to_image(resolve_checkpoint(args.ckpt, args.runs_dir, kind="text-to-image"),
                              tokenizer_ckpt=tokenizer)
    data_class = task.data_class_path or ""
    if judge is not None and data_class and not data_class.endswith(".CaptionedMNISTDataModule"):
        raise ValueError(f"--judge scores Captioned MNIST images, but {args.ckpt} was trained on "
                         f"{data_class.rsplit('.', 1)[-1]}")
    task.to(args.device)
    task.vqvae.to(args.device)  # a plain attribute, not a submodule (see TextToImageTask)
    unknown = task.caption_tokenizer.unknown_rate(captions)
    truncated = task.caption_tokenizer.n_truncated(captions)
    if truncated:
        print(f"{PROG}: note: {truncated} caption(s) longer than the model's {task.caption_tokenizer.max_len} text "
              "tokens were cut to that length", file=sys.stderr)
    if unknown >= 0.25:
        print(f"{PROG}: note: {unknown:.0%} of the caption tokens are unknown to this model's vocabulary "
              "(another dataset's captions, or not text?)", file=sys.stderr)
    n_draw = args.n if judge is None else (4 * args.n if args.candidates is None else args.candidates)
    start = time.perf_counter()
    images = task.generate(captions, n_draw, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, cfg_scale=args.cfg_scale, use_cache=not args.no_cache,
                           seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    if judge is not None:
        from tx_suite.tasks.judge import caption_scores

        scores = caption_scores(judge.to(args.device), images, [c for c in captions for _ in range(n_draw)])
        images = rerank(images, scores, n_draw, keep=args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as f:  # an interrupted save keeps the previous grid, not half a PNG
        # A file object carries no name for PIL to read the format from: name it from the suffix.
        from PIL import Image

        Image.init()
        save_image(make_grid(images.cpu(), nrow=args.n, padding=1, pad_value=0.5), f,
                   format=Image.registered_extensions()[args.out.suffix.lower()])
    return {"out": str(args.out), "captions": len(captions), "images_sampled": len(captions) * n_draw,
            "seconds": round(seconds, 3), "images_per_s": round(len(captions) * n_draw / seconds, 2),
            "unknown_token_rate": round(unknown, 4), "truncated_captions": truncated, "reranked": args.judge is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (OSError, ValueError, RuntimeError) as err:  # OSError: an unwritable --out, a full disk
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
