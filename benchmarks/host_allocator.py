"""Training-step time with glibc's default malloc settings against freed memory kept in the process
(``tx_suite.utils.host_allocator.keep_freed_memory``, what ``tx-suite fit`` applies).

The setting is process-wide and cannot be undone, so each variant runs in its own child process;
children alternate (default, kept, default, kept, ...) so machine noise hits both. Each child
builds the TranslationTask of ``--config`` on its first ``--batches`` real training batches (seed
0), runs one warm-up pass, then ``--repeats`` timed passes of full steps (forward and loss under
the config's autocast, backward, clipping at 1.0, Adam), and reports seconds per step and minor
page faults per step (``getrusage``: pages the kernel had to zero-fill and map). Prints JSON lines
and a table.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/host_allocator.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("WANDB_MODE", "disabled")

from _common import (
    ROOT,
    config_precision,
    cpu_autocast,
    git_commit,
    machine,
    positive_int,
    repo_path,
    translation_pass,
    translation_setup,
)

sys.path.insert(0, str(ROOT))

VARIANTS = ("default", "kept")


def child(variant: str, config: str, n_batches: int, repeats: int) -> dict:
    import torch

    from tx_suite.utils.host_allocator import keep_freed_memory

    if variant == "kept" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() had no effect here (not glibc, or TX_SUITE_MALLOC / MALLOC_* set)")
    precision = config_precision(config)
    task, batches = translation_setup(config, n_batches)
    task.model.train()
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def context():
        return cpu_autocast(precision)

    translation_pass(task, batches, opt, context)  # warm-up: thread pool, bf16 casts, and the heap's first growth
    times, faults = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times.append(translation_pass(task, batches, opt, context))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(batches))
    return {"variant": variant, "s_per_step": times, "minor_faults_per_step": faults, "machine": machine()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/translation/multi30k_en_de_tiny_bf16.yaml", type=repo_path)
    ap.add_argument("--batches", type=positive_int, default=4, help="real training batches per timed pass")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed passes per child")
    ap.add_argument("--rounds", type=positive_int, default=2, help="children per variant (alternating)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.config, args.batches, args.repeats)), flush=True)
        return 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TX_SUITE_MALLOC"))}
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--config", args.config,
                                  "--batches", str(args.batches), "--repeats", str(args.repeats)],
                                 env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"child failed: {variant}",
                      file=sys.stderr)
                return 1
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            results[variant].append(row)

    best = {v: min(t for r in rows for t in r["s_per_step"]) for v, rows in results.items()}
    faults = {v: min(f for r in rows for f in r["minor_faults_per_step"]) for v, rows in results.items()}
    summary = {"config": args.config, "batches": args.batches, "repeats": args.repeats, "rounds": args.rounds,
               "best_s_per_step": best, "min_minor_faults_per_step": faults,
               "speedup_kept_over_default": best["default"] / best["kept"], "commit": git_commit()}
    print(json.dumps(summary), flush=True)
    print("\n| malloc | best s/step | all passes (s/step) | minor page faults/step |\n|---|---|---|---|")
    for v, rows in results.items():
        passes = " / ".join(f"{t:.2f}" for r in rows for t in r["s_per_step"])
        print(f"| {v} | {best[v]:.3f} | {passes} | {faults[v]:,.0f} |")
    print(f"\nkept / default: {summary['speedup_kept_over_default']:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
