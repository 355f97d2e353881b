"""Training/inference throughput of the shared core vs torch.nn.Transformer and timm's ViT.

Same process, same shapes, one optimiser step at a time; the two models alternate step by step so
that background load affects them alike. Reports tokens (or images) per second, our/peer ratios, the
float32 matmul peak of this machine measured in the same run, and the fraction of it achieved
(FLOPs counted with torch.utils.flop_counter on one training step).

    python benchmarks/core_throughput.py            # full grid (24 configs: over 15 minutes on 2 CPU cores)
    python benchmarks/core_throughput.py --quick    # one small config of each kind
    python benchmarks/core_throughput.py --only vit # only the configs whose label contains "vit"

Prints one JSON object per line, then a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tx_suite from this checkout, installed or not
from tx_suite.core import EncoderDecoder, TransformerConfig, causal_mask  # noqa: E402
from tx_suite.models import VisionTransformer  # noqa: E402


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Best float32 GEMM rate in FLOP/s over ``reps`` ``n x n x n`` products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Case:
    name: str
    step: callable  # () -> None, one training (or inference) step
    items: int  # tokens or images per step


def seq2seq_cases(d_model: int, layers: int, batch: int, seq: int, device, train: bool,
                  attn_dropout: float = 0.1, skip_padding: bool = True) -> tuple[Case, Case, float]:
    """Ours vs nn.Transformer on a Multi30k-like batch: embedded (B, S, D) inputs, padded sources,
    causal + padded targets (lengths uniform in [S/2, S], 27 % padding), tokens/s counting real tokens, residual/FFN dropout 0.1,
    a loss on the real target tokens. nn.Transformer always drops attention weights with the
    same rate and computes every padded row in training; ``attn_dropout=0.1, skip_padding=False``
    gives ours identical work ("parity"). Our defaults: ``attn_dropout=0.0`` (fairseq's and timm's),
    which lets the fused kernel run, and ``skip_padding`` (projections and feed-forward blocks on
    real tokens only, tx_suite.core.packing)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    src = torch.randn(batch, seq, d_model, generator=g).to(device)
    tgt = torch.randn(batch, seq, d_model, generator=g).to(device)
    # Own generator: drawn after the inputs, the lengths (and the padding: 21 % at d256, 25 % at
    # d512 in the runs recorded before 12-06) depended on d_model. Now 27 % at every width.
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=torch.Generator().manual_seed(1))
    src_pad = (torch.arange(seq)[None] >= lengths[:, None]).to(device)
    tgt_pad = src_pad.clone()
    cfg = TransformerConfig(d_model=d_model, n_heads=8, d_ff=4 * d_model, dropout=0.1, attn_dropout=attn_dropout,
                            final_norm=True, skip_padding=skip_padding)
    ours = EncoderDecoder(cfg, layers, layers).to(device)
    ref = nn.Transformer(d_model, 8, layers, layers, 4 * d_model, dropout=0.1, batch_first=True).to(device)
    tgt_mask = ~causal_mask(seq, device=device)  # torch's convention: True = blocked
    real = ~tgt_pad

    def make(model, fwd):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

        def train_step():
            model.train()
            loss = fwd()[real].float().pow(2).mean()  # real target rows, as a translation loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.inference_mode()
        def infer_step():
            model.eval()
            fwd()

        return train_step if train else infer_step

    ours_step = make(ours, lambda: ours(src, tgt, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad))
    ref_step = make(ref, lambda: ref(src, tgt, tgt_mask=tgt_mask, src_key_padding_mask=src_pad,
                                     tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
                                     tgt_is_causal=True))
    flops = count_flops(ours_step)
    tokens = 2 * int(real.sum())  # real source + target tokens (before 12-06: padded positions, 2 * B * S)
    return Case("tx", ours_step, tokens), Case("torch.nn.Transformer", ref_step, tokens), flops


def vit_cases(d_model: int, layers: int, heads: int, img: int, patch: int, chans: int, batch: int, device,
              train: bool, cls_only: bool = True) -> tuple[Case, Case, float]:
    """Ours vs timm's VisionTransformer of the same configuration, cross-entropy on 10 classes.

    ``cls_only=True`` is our ``forward`` (the last layer computes the CLS row only, the one the
    head reads); ``False`` ("parity") runs ``forward_head(forward_features(x))``, every row of
    every layer, i.e. timm's work."""
    torch.manual_seed(0)
    kw = dict(img_size=img, patch_size=patch, in_chans=chans, num_classes=10)
    ours = VisionTransformer(**kw, d_model=d_model, n_layers=layers, n_heads=heads, dropout=0.1).to(device)
    # Ours drops after the position embedding and not before the head: timm's pos_drop_rate and
    # no drop_rate (its head dropout) is the same work (before 12-06 timm had drop_rate=0.1, so it
    # dropped 2.7 % fewer elements than ours).
    ref = TimmViT(**kw, embed_dim=d_model, depth=layers, num_heads=heads, pos_drop_rate=0.1, drop_rate=0.0,
                  proj_drop_rate=0.1).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, chans, img, img, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def make(model, fwd):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            model.train()
            loss = nn.functional.cross_entropy(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.inference_mode()
        def infer_step():
            model.eval()
            fwd(x)

        return train_step if train else infer_step

    ours_fwd = ours if cls_only else (lambda im: ours.forward_head(ours.forward_features(im)))
    ours_step, ref_step = make(ours, ours_fwd), make(ref, ref)
    return Case("tx", ours_step, batch), Case("timm ViT", ref_step, batch), count_flops(ours_step)


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_pair(a: Case, b: Case, device, steps: int) -> tuple[float, float]:
    """Median seconds per step of each case over ``steps`` steps, alternating single steps
    (a, b, b, a, ...) so that background load and thermal drift hit both cases alike."""
    for case in (a, b):
        for _ in range(3):
            case.step()
    times = {a.name: [], b.name: []}
    for i in range(steps):
        for case in ((a, b) if i % 2 == 0 else (b, a)):
            _sync(device)
            t0 = time.perf_counter()
            case.step()
            _sync(device)
            times[case.name].append(time.perf_counter() - t0)
    return statistics.median(times[a.name]), statistics.median(times[b.name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small config of each kind")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and config")
    parser.add_argument("--only", default=None, metavar="TEXT",
                        help="run only the configs whose label contains TEXT (e.g. 'vit', 'd512 6+6')")
    args = parser.parse_args()
    if args.steps < 1:  # statistics.median of no timings failed at the end
        parser.error(f"--steps must be >= 1, got {args.steps}")
    device = torch.device(args.device)

    seq_grid = [(256, 3)] if args.quick else [(256, 3), (256, 6), (512, 3), (512, 6)]
    vit_grid = [(192, 6, 3, 28, 4, 1, 128)] if args.quick else [(192, 6, 3, 28, 4, 1, 128), (384, 6, 6, 32, 4, 3, 128)]
    jobs = []
    for d, n in seq_grid:
        for setting, attn_dropout, skip in (("parity", 0.1, False), ("parity+skip pad", 0.1, True),
                                            ("tx default", 0.0, True)):
            jobs.append((f"seq2seq d{d} {n}+{n} 64x24 {setting}", True,
                         lambda d=d, n=n, p=attn_dropout, k=skip: seq2seq_cases(d, n, 64, 24, device, True, p, k)))
        jobs.append((f"seq2seq d{d} {n}+{n} 64x24", False, lambda d=d, n=n: seq2seq_cases(d, n, 64, 24, device, False)))
    for d, n, h, img, p, c, bs in vit_grid:
        for train, setting, cls_only in ((True, "parity", False), (True, "tx default", True),
                                         (False, "parity", False), (False, "tx default", True)):
            jobs.append((f"vit d{d} L{n} {img}px/p{p} b{bs} {setting}", train,
                         lambda d=d, n=n, h=h, img=img, p=p, c=c, bs=bs, t=train, o=cls_only:
                         vit_cases(d, n, h, img, p, c, bs, device, t, o)))

    if args.only is not None:
        jobs = [job for job in jobs if args.only in job[0]]
        if not jobs:
            parser.error(f"--only {args.only!r} matches no config label")

    peak = matmul_peak(device)  # re-measured after every config; the best reading is the peak
    rows = []
    meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), matmul_peak_gflops=round(peak / 1e9, 1))
    print(json.dumps({"meta": meta}))
    for label, train, build in jobs:
        ours, peer, flops = build()
        t_ours, t_peer = time_pair(ours, peer, device, args.steps)
        peak = max(peak, matmul_peak(device, reps=3))
        row = dict(config=label, mode="train" if train else "infer", peer=peer.name,
                   ours_items_per_s=round(ours.items / t_ours, 1), peer_items_per_s=round(peer.items / t_peer, 1),
                   ratio=round(t_peer / t_ours, 3), ours_gflops=round(flops / t_ours / 1e9, 1),
                   # against the best peak so far: a run cut short (a GPU session's time limit)
                   # still has a fraction per row; the final table uses the run's best peak
                   peak_fraction_so_far=round(flops / t_ours / peak, 3))
        rows.append(row)
        print(json.dumps(row), flush=True)

    for r in rows:  # fractions against the best peak seen during the whole run
        r["peak_fraction"] = round(r["ours_gflops"] / (peak / 1e9), 3)
    print(json.dumps({"matmul_peak_gflops": round(peak / 1e9, 1), "peak_fractions": [r["peak_fraction"] for r in rows]}))
    print(f"\nmatmul peak (fp32, {device}, best of the run): {peak / 1e9:.1f} GFLOP/s, {meta['threads']} threads")
    print(f"{'config':40s} {'mode':5s} {'peer':20s} {'ours/s':>9s} {'peer/s':>9s} {'ratio':>6s} {'peak%':>6s}")
    for r in rows:
        print(f"{r['config']:40s} {r['mode']:5s} {r['peer']:20s} {r['ours_items_per_s']:9.0f} "
              f"{r['peer_items_per_s']:9.0f} {r['ratio']:6.2f} {100 * r['peak_fraction']:5.1f}%")


if __name__ == "__main__":
    main()
