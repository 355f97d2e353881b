"""Training throughput of our ViT vs timm's VisionTransformer of the same size, same run.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/vision_throughput.py

One training step = forward, cross-entropy, backward, AdamW step on a fixed random batch
(data loading excluded), as the task runs it: under bf16 autocast or in fp32, with PyTorch's
default attention kernel or the math one (the task's ``sdpa_backend``). The backbones are timed
in alternating rounds so that load from other processes hits both alike; the ratio uses the
median step time. Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import positive_int  # noqa: E402
from tx_suite.tasks.classification import build_backbone  # noqa: E402

MNIST_VIT = dict(num_classes=10, img_size=28, in_chans=1, patch_size=4, d_model=128, n_layers=6, n_heads=4,
                 d_ff=256, drop_path=0.1)


def make_step(backbone: str, precision: str, sdpa: str | None, batch_size: int):
    torch.manual_seed(0)
    model = build_backbone(backbone, **MNIST_VIT).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))

    def kernel():
        if sdpa is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), kernel():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=positive_int, default=3)
    args = p.parse_args(argv)
    rows = []
    for precision, sdpa in (("bf16", "math"), ("bf16", None), ("fp32", None)):
        steps = {b: make_step(b, precision, sdpa, args.batch_size) for b in ("tx", "timm")}
        times = {b: [] for b in steps}
        for b, step in steps.items():  # warm-up (allocator, oneDNN primitive cache)
            step(), step()
        for _ in range(args.rounds):
            for b, step in steps.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[b].append((time.perf_counter() - t) / args.steps)
        ips = {b: args.batch_size / statistics.median(ts) for b, ts in times.items()}
        row = {"precision": precision, "sdpa": sdpa or "default", "batch_size": args.batch_size,
               "tx_img_s": round(ips["tx"], 1), "timm_img_s": round(ips["timm"], 1),
               "tx_over_timm": round(ips["tx"] / ips["timm"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| precision | attention kernel | tx img/s | timm img/s | tx / timm |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['sdpa']} | {r['tx_img_s']:.0f} | {r['timm_img_s']:.0f} | {r['tx_over_timm']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
