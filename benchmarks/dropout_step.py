"""Time of one translation training step with the core's ``Dropout`` (a ``torch.rand`` mask on CPU)
against the same step with ``F.dropout`` (what ``nn.Dropout`` runs: ``bernoulli_``), on real
Multi30k batches, same process, same weights, in fp32 and in bf16 autocast + the math kernel.

Repetitions alternate between the variants, so machine noise hits all of them; the table gives
the best pass of each. Prints JSON and a table.

    OMP_WAIT_POLICY=PASSIVE flock /tmp/tx-cpu.lock python benchmarks/dropout_step.py \
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

# variant -> (bf16 autocast + math kernel?, dropout implementation)
VARIANTS = {"fp32 F.dropout": (False, "torch"), "fp32 core": (False, "core"),
            "bf16 F.dropout": (True, "torch"), "bf16 core": (True, "core")}


def main() -> int:
    args = step_benchmark_args(__doc__.splitlines()[0])

    import torch
    import torch.nn.functional as F

    from tx_suite.core.dropout import Dropout

    core_forward = Dropout.forward

    def torch_forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    task, batches = translation_setup(args.config, args.batches)
    model = task.model.train()
    n_dropout = sum(isinstance(m, Dropout) for m in model.modules())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def context(name: str) -> contextlib.ExitStack:
        bf16, impl = VARIANTS[name]
        Dropout.forward = core_forward if impl == "core" else torch_forward
        task.hparams.sdpa_backend = "math" if bf16 else None  # read by TranslationTask._loss
        stack = contextlib.ExitStack()
        if bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    times = alternate(lambda name: translation_pass(task, batches, opt, lambda: context(name)), VARIANTS, args.repeats)
    Dropout.forward = core_forward
    best = {k: min(v) for k, v in times.items()}
    result = {"config": args.config, "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "dropout_modules": n_dropout, "dropout_p": task.hparams.dropout,
              "tgt_shapes": [tuple(b["tgt_out"].shape) for b in batches],
              "s_per_step": {k: [round(t, 3) for t in v] for k, v in times.items()},
              "core_speedup": {p: round(best[f"{p} F.dropout"] / best[f"{p} core"], 3) for p in ("fp32", "bf16")}}
    print(json.dumps(result, indent=1))
    print(f"\n{'variant':<15} {'s/step (best)':>13} {'passes':>22}")
    for k in VARIANTS:
        print(f"{k:<15} {best[k]:>13.3f} {' / '.join(f'{t:.2f}' for t in times[k]):>22}")
    for p, r in result["core_speedup"].items():
        print(f"core / F.dropout, {p}: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
