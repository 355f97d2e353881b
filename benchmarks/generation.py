"""Text-to-image measurements: judge accuracy, caption fidelity, likelihood, sampling speed.

Each sub-command prints one JSON object and a short table (see docs/generation.md):

    python benchmarks/generation.py judge --judge judge_mnist:best --tokenizer vqvae_mnist:best
    python benchmarks/generation.py fidelity --ckpt t2i_mnist:best --judge judge_mnist:best --cfg-scale 1 3
    python benchmarks/generation.py nll --ckpt t2i_emoji:best
    python benchmarks/generation.py speed --ckpt t2i_mnist:best --grid 8 16

Checkpoints are files or ``<experiment>:best|last`` (newest run under ``runs/``). Threads: torch
uses ``--threads`` (default 1: on a CPU shared with other jobs, more threads are much slower).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tx_suite from this checkout, installed or not
from tx_suite.data.captioned_mnist import CaptionedMNIST  # noqa: E402
from tx_suite.decoding.sampling import rerank, sample_image_tokens  # noqa: E402
from tx_suite.models.text_to_image import TextToImageTransformer  # noqa: E402
from tx_suite.tasks.judge import CLASSES, caption_scores, judge_predictions, load_judge  # noqa: E402
from tx_suite.tasks.text_to_image import load_text_to_image  # noqa: E402
from tx_suite.tasks.vqvae import load_vqvae, resolve_checkpoint  # noqa: E402
from tx_suite.utils.checkpoint import init_kwargs, load_checkpoint  # noqa: E402


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def scenes(split: str, combos: str, n: int, seed: int = 0) -> tuple[torch.Tensor, dict, list[str]]:
    """Real scenes: images ``(n, 3, 32, 32)``, attribute targets ``{name: (n,)}``, captions."""
    ds = CaptionedMNIST(split=split, combos=combos, size=n, seed=seed)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it["image"] for it in items]),
            {k: torch.stack([it[k] for it in items]) for k in CLASSES},
            [it["caption"] for it in items])


def accuracy(judge, images: torch.Tensor, targets: dict) -> dict:
    pred = {k: v.argmax(-1) for k, v in judge_predictions(judge, images).items()}
    ok = {k: pred[k] == targets[k] for k in CLASSES}
    out = {k: round(float(v.float().mean()), 4) for k, v in ok.items()}
    out["all"] = round(float(torch.stack(list(ok.values())).all(0).float().mean()), 4)
    return out


def table(rows: list[tuple], header: tuple) -> str:
    lines = [" | ".join(str(h) for h in header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(c) for c in r) for r in rows]
    return "\n".join(lines)


# ---- judge ---------------------------------------------------------------------------------------

def cmd_judge(args) -> dict:
    judge = load_judge(resolve_checkpoint(args.judge, kind="judge"))
    vq = load_vqvae(resolve_checkpoint(args.tokenizer, kind="VQ-VAE")) if args.tokenizer else None
    result, rows = {}, []
    for combos in ("seen", "heldout"):
        images, targets, _ = scenes("test", combos, args.n)
        result[f"real_{combos}"] = accuracy(judge, images, targets)
        rows.append((f"real scenes, {combos} pairs", *result[f"real_{combos}"].values(), "-"))  # no psnr: the originals
        if vq is not None:
            with torch.no_grad():
                recon = torch.cat([vq.decode(vq.encode(c)) for c in images.split(256)])
            result[f"recon_{combos}"] = accuracy(judge, recon, targets)
            mse = float((recon - images).pow(2).mean())
            result[f"recon_{combos}"]["psnr_db"] = round(10 * math.log10(1 / mse), 2)
            rows.append((f"VQ-VAE reconstructions, {combos} pairs", *result[f"recon_{combos}"].values()))
    header = ("images (MNIST test digits)", *CLASSES, "all", *(("psnr_db",) if vq is not None else ()))
    print(table([r[:len(header)] for r in rows], header))
    return {"n_per_subset": args.n, **result}


# ---- fidelity --------------------------------------------------------------------------------------

def cmd_fidelity(args) -> dict:
    task = load_text_to_image(resolve_checkpoint(args.ckpt, kind="text-to-image"), args.tokenizer)
    judge = load_judge(resolve_checkpoint(args.judge, kind="judge"))
    scorer = load_judge(resolve_checkpoint(args.rerank_judge, kind="judge")) if args.rerank_judge else None
    result, rows = {}, []
    for scale in args.cfg_scale:
        for combos in ("seen", "heldout"):
            _, targets, captions = scenes("test", combos, args.n, seed=args.scene_seed)
            n_draw = args.candidates if scorer is not None else 1
            start = time.perf_counter()
            images = task.generate(captions, n_draw, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p, cfg_scale=scale, seed=args.seed,
                                   batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            if scorer is not None:
                scores = caption_scores(scorer, images, [c for c in captions for _ in range(n_draw)])
                images = rerank(images, scores, n_draw, keep=1)
            acc = accuracy(judge, images, targets)
            acc["images_per_s"] = round(len(captions) * n_draw / seconds, 2)
            key = f"cfg{scale:g}_{combos}"
            result[key] = acc
            rows.append((f"{scale:g}", combos, *acc.values()))
    print(table(rows, ("cfg scale", "pairs", *CLASSES, "all", "images/s")))
    return {"n_captions_per_subset": args.n, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "scene_seed": args.scene_seed, "candidates": args.candidates if scorer else 1,
            "reranked_by": args.rerank_judge, **result}


# ---- likelihood ----------------------------------------------------------------------------------

@torch.no_grad()
def cmd_nll(args) -> dict:
    """Bits per image token (image CE / ln 2) on the held-out split of the checkpoint's data."""
    ckpt_path = resolve_checkpoint(args.ckpt, kind="text-to-image")
    task = load_text_to_image(ckpt_path, args.tokenizer)
    data_cfg = init_kwargs(load_checkpoint(ckpt_path).get("datamodule_hyper_parameters") or {})
    if "train_vendors" in data_cfg:
        from tx_suite.data.emoji_datamodule import EmojiDataModule as DM
    else:
        from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule as DM
    dm = DM(**data_cfg)
    dm.setup("test")
    sums: dict[str, list[float]] = {}
    for batch in dm.test_dataloader():
        _, image_ce = task._losses(batch)
        bits = image_ce.mean(1) / math.log(2)
        groups = {"all": torch.ones_like(bits, dtype=torch.bool)}
        if "heldout" in batch:
            groups.update(seen=~batch["heldout"], heldout=batch["heldout"])
        if "vendor" in batch:
            groups.update(twitter=batch["vendor"] == 0, google=batch["vendor"] == 1)
        for k, m in groups.items():
            s = sums.setdefault(k, [0.0, 0])
            s[0] += float(bits[m].sum())
            s[1] += int(m.sum())
    result = {k: round(s / max(n, 1), 4) for k, (s, n) in sums.items()}
    uniform = math.log2(task.vqvae.codebook_size)
    print(table([(k, v, n) for (k, v), (_, n) in zip(result.items(), sums.values())],
                ("test subset", "bits/image token", "images")))
    print(f"(uniform over the codebook: {uniform:.2f} bits)")
    return {"bits_per_image_token": result, "uniform_bits": uniform,
            "n_images": {k: n for k, (_, n) in sums.items()}}


# ---- speed ---------------------------------------------------------------------------------------

def time_sampling(model, text, use_cache: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sample_image_tokens(model, text, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - start)
    return best


def cmd_speed(args) -> dict:
    trained = load_text_to_image(resolve_checkpoint(args.ckpt, kind="text-to-image"), args.tokenizer) if args.ckpt else None
    h = trained.hparams if trained else dict(text_vocab_size=64, text_len=16, d_model=128, n_heads=4,
                                             d_ff=512, n_layers=4)
    result, rows = {}, []
    for grid in args.grid:
        if trained is not None and trained.model.grid == (grid, grid):
            model, weights = trained.model, "trained"
        else:
            # Same sizes, untrained weights: sampling time does not depend on the weights.
            torch.manual_seed(0)
            model = TextToImageTransformer(h["text_vocab_size"], h["text_len"], 512, grid, grid,
                                           d_model=h["d_model"], n_heads=h["n_heads"], d_ff=h["d_ff"],
                                           n_layers=h["n_layers"])
            weights = "random"
        model.eval()
        text = torch.randint(3, h["text_vocab_size"], (args.batch, h["text_len"]))
        cached = time_sampling(model, text, True, args.repeats)
        uncached = time_sampling(model, text, False, args.repeats)
        r = {"weights": weights, "batch": args.batch, "tokens": grid * grid,
             "cached_images_per_s": round(args.batch / cached, 2),
             "uncached_images_per_s": round(args.batch / uncached, 2),
             "speedup": round(uncached / cached, 2)}
        result[f"{grid}x{grid}"] = r
        rows.append((f"{grid}x{grid}", weights, r["cached_images_per_s"], r["uncached_images_per_s"], r["speedup"]))
    print(table(rows, ("grid", "weights", "cached img/s", "uncached img/s", "speed-up")))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judge", help="judge accuracy on real held-out scenes (and reconstructions)")
    j.add_argument("--judge", required=True)
    j.add_argument("--tokenizer", default=None)
    j.add_argument("--n", type=int, default=2500, help="scenes per subset (seen / held-out pairs)")
    f = sub.add_parser("fidelity", help="judge generated images for seen and held-out captions")
    f.add_argument("--ckpt", required=True)
    f.add_argument("--tokenizer", default=None)
    f.add_argument("--judge", required=True)
    f.add_argument("--n", type=int, default=300, help="captions per subset")
    f.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0])
    f.add_argument("--temperature", type=float, default=1.0)
    f.add_argument("--top-k", type=int, default=None)
    f.add_argument("--top-p", type=float, default=None)
    f.add_argument("--rerank-judge", default=None, help="a second judge used as re-ranking scorer")
    f.add_argument("--candidates", type=int, default=8)
    f.add_argument("--seed", type=int, default=0, help="sampling seed")
    f.add_argument("--scene-seed", type=int, default=0,
                   help="which test captions (0: the ones the sampling settings were compared on)")
    f.add_argument("--batch-size", type=int, default=100)
    n = sub.add_parser("nll", help="bits per image token on the held-out test split")
    n.add_argument("--ckpt", required=True)
    n.add_argument("--tokenizer", default=None)
    s = sub.add_parser("speed", help="cached vs uncached sampling speed")
    s.add_argument("--ckpt", default=None)
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--grid", type=int, nargs="+", default=[8, 16])
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = {"cmd": args.cmd, **{"cmd_judge": cmd_judge, "cmd_fidelity": cmd_fidelity,
                               "cmd_nll": cmd_nll, "cmd_speed": cmd_speed}[f"cmd_{args.cmd}"](args)}
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["machine"] = machine()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
