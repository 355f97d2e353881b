"""Time of one translation training step in fp32 and bf16 autocast, with PyTorch's attention
kernel and with the math kernel (``TranslationTask(sdpa_backend="math")``), on real Multi30k
batches, in the same process, on the same weights.

bf16 is ``torch.autocast(device, dtype=torch.bfloat16)``, what ``trainer.precision: bf16-mixed``
wraps a step in: weights, gradients and Adam state stay fp32. Repetitions alternate between the
variants, so machine noise hits all of them. Also reports each variant's loss on one batch with
dropout off (the bf16 rounding). Prints JSON and a table.

    flock /tmp/tx-cpu.lock python benchmarks/translation_precision.py \
        --config experiments/translation/multi30k_en_de_tiny.yaml
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

os.environ.setdefault("WANDB_MODE", "disabled")

from _common import (ROOT, alternate, git_commit, machine, step_benchmark_args, translation_pass,  # noqa: E402
                     translation_setup)

sys.path.insert(0, str(ROOT))  # tx_suite from this checkout, installed or not


VARIANTS = {"fp32": (None, None), "fp32_math": (None, "math"),
            "bf16": ("bf16", None), "bf16_math": ("bf16", "math")}


def main() -> int:
    args = step_benchmark_args(__doc__.splitlines()[0])

    import torch

    task, batches = translation_setup(args.config, args.batches)
    model = task.model

    def context(name: str) -> contextlib.ExitStack:
        precision, kernel = VARIANTS[name]
        task.hparams.sdpa_backend = kernel  # read by TranslationTask._loss
        stack = contextlib.ExitStack()
        if precision == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    model.eval()
    values = {}
    with torch.no_grad():
        for name in VARIANTS:
            with context(name):
                loss_sum, _, n = task._loss(batches[0])
            values[name] = float(loss_sum / n)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    times = alternate(lambda name: translation_pass(task, batches, opt, lambda: context(name)), VARIANTS, args.repeats)
    best = {k: min(v) for k, v in times.items()}
    result = {"config": args.config, "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "tgt_shapes": [tuple(b["tgt_out"].shape) for b in batches],
              "loss_per_token_eval": {k: round(v, 5) for k, v in values.items()},
              "s_per_step": {k: [round(t, 3) for t in v] for k, v in times.items()},
              "speedup_vs_fp32": {k: round(best["fp32"] / v, 3) for k, v in best.items()}}
    print(json.dumps(result, indent=1))
    print(f"\n{'variant':<10} {'s/step (best)':>13} {'vs fp32':>8} {'loss/token':>10}")
    for k in VARIANTS:
        print(f"{k:<10} {best[k]:>13.3f} {result['speedup_vs_fp32'][k]:>7.2f}x {values[k]:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
