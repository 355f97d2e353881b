"""``torch.compile`` of the translation model's forward against eager, one training step at a time.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/translation_compile.py

The TranslationTask of ``--config`` (default: the tiny en->de model in bf16 autocast with the math
attention kernel) on its first ``--batches`` real training batches; each step (forward + loss
under autocast, backward, clipping, Adam) with ``model.forward_features`` eager or
``torch.compile(..., dynamic=True)`` (batch shapes vary), alternating passes after a first
compiled pass that includes the compilation. ``--no-skip-padding`` turns off the layers'
padding skip (``TransformerConfig.skip_padding``), whose host sync splits the compiled graph.
Prints JSON lines and a table.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from _common import (
    ROOT,
    alternate,
    config_precision,
    cpu_autocast,
    git_commit,
    machine,
    step_benchmark_args,
    translation_pass,
    translation_setup,
)

sys.path.insert(0, str(ROOT))


def main() -> int:
    args = step_benchmark_args(
        __doc__.split("\n")[0], config="experiments/translation/multi30k_en_de_tiny_bf16.yaml",
        flags={"--no-skip-padding": "run the layers on padded batches (one graph, no host sync)"})
    skip_padding = not args.no_skip_padding
    precision = config_precision(args.config)
    task, batches = translation_setup(args.config, args.batches)
    task.model.train()
    for m in task.model.modules():
        cfg = getattr(m, "cfg", None)
        if cfg is not None and hasattr(cfg, "skip_padding"):
            cfg.skip_padding = skip_padding

    def context():
        return cpu_autocast(precision)

    eager = task.model.forward_features
    compiled = torch.compile(eager, dynamic=True)
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-4)

    def run(name: str) -> float:
        task.model.forward_features = compiled if name == "compiled" else eager
        return translation_pass(task, batches, opt, context)

    t0 = time.perf_counter()
    run("compiled")  # builds the graphs (dynamic shapes: once, not per batch shape)
    first_pass_s = time.perf_counter() - t0
    times = alternate(run, ["eager", "compiled"], args.repeats)
    best = {n: min(ts) for n, ts in times.items()}
    result = {"config": args.config, "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "precision": precision, "skip_padding": skip_padding,
              "first_compiled_pass_s": round(first_pass_s, 1),
              "passes_s_per_step": {n: [round(t, 3) for t in ts] for n, ts in times.items()},
              "best_s_per_step": {n: round(b, 3) for n, b in best.items()},
              "speedup_best": round(best["eager"] / best["compiled"], 3)}
    print(json.dumps(result))
    print("\n| variant | s/step (best pass) | passes |\n|---|---|---|")
    for n, ts in times.items():
        print(f"| {n} | {best[n]:.3f} | {' / '.join(f'{t:.2f}' for t in ts)} |")
    print(f"\ncompiled / eager: {result['speedup_best']:.2f}x (skip_padding={skip_padding})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
