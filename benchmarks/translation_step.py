"""Time of one translation training step (forward, loss, backward, clip, Adam) on real Multi30k
batches: our loss path against the usual one, in the same process, on the same weights.

- ``fused``: :meth:`TranslationTask._loss`: the non-padding target rows only, projected and scored
  256 rows at a time with both gradients formed in the forward pass
  (``linear_label_smoothed_nll_loss`` in ``tx_suite/tasks/translation_loss.py``).
- ``unfused``: the same rows, ``lm_head`` on all of them at once, then the label-smoothed
  cross-entropy with its one-pass backward (``label_smoothed_nll_loss``; the task's loss until the
  fused one).
- ``torch_ce``: logits for every ``(B, T)`` position, then
  ``F.cross_entropy(..., ignore_index=pad_id, label_smoothing=eps)``.

Each step runs under the config's ``trainer.precision`` (bf16 autocast for ``bf16-mixed``).
Repetitions alternate between the variants, so machine noise hits all. Prints JSON and a table.

    flock /tmp/tx-cpu.lock python benchmarks/translation_step.py \
        --config experiments/translation/multi30k_en_de_tiny.yaml
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("WANDB_MODE", "disabled")

from _common import (ROOT, config_precision, cpu_autocast, git_commit, machine, step_benchmark_args,  # noqa: E402
                     translation_setup)

sys.path.insert(0, str(ROOT))  # tx_suite from this checkout, installed or not


def main() -> int:
    args = step_benchmark_args(__doc__.splitlines()[0])

    import torch
    import torch.nn.functional as F

    from tx_suite.data.bpe import PAD_ID
    from tx_suite.tasks.translation_loss import label_smoothed_nll_loss

    task, batches = translation_setup(args.config, args.batches)
    model, eps = task.model, task.hparams.label_smoothing

    from tx_suite.tasks.sdpa_backend import sdpa_backend_context

    def torch_ce(b):
        # The task's attention kernel too (a config's sdpa_backend: math), so both do the same work.
        with sdpa_backend_context(task.hparams.sdpa_backend, b["src"].device):
            logits = model(b["src"], b["tgt_in"], b["src_key_padding_mask"])  # (B, T, V)
        n = int((b["tgt_out"] != PAD_ID).sum())
        return F.cross_entropy(logits.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=PAD_ID,
                               label_smoothing=eps, reduction="sum"), n

    def fused(b):
        loss_sum, _, n = task._loss(b)
        return loss_sum, n

    def unfused(b):
        with sdpa_backend_context(task.hparams.sdpa_backend, b["src"].device):
            h = model.forward_features(b["src"], b["tgt_in"], b["src_key_padding_mask"])
        keep = b["tgt_out"] != PAD_ID
        loss_sum, _, n = label_smoothed_nll_loss(model.lm_head(h[keep]), b["tgt_out"][keep], eps)
        return loss_sum, n

    variants = {"fused": fused, "unfused": unfused, "torch_ce": torch_ce}
    precision = config_precision(args.config)
    model.eval()
    with torch.no_grad(), cpu_autocast(precision):  # the same number, three ways (dropout off)
        values = {k: float(loss_sum / n) for k, f in variants.items() for loss_sum, n in [f(batches[0])]}
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def run_pass(f) -> float:
        t0 = time.perf_counter()
        for b in batches:
            opt.zero_grad(set_to_none=True)
            with cpu_autocast(precision):
                loss_sum, n = f(b)
            (loss_sum / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return (time.perf_counter() - t0) / len(batches)

    for f in variants.values():
        run_pass(f)  # warm-up: allocator, thread pool
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, f in variants.items():
            times[k].append(run_pass(f))
    best = {k: min(v) for k, v in times.items()}
    shapes = [tuple(b["tgt_out"].shape) for b in batches]
    pad = sum(int((b["tgt_out"] == PAD_ID).sum()) for b in batches) / sum(b["tgt_out"].numel() for b in batches)
    result = {"config": args.config, "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "precision": precision, "tgt_shapes": shapes,
              "tgt_padding_fraction": round(pad, 3),
              "loss_per_token": {k: round(v, 5) for k, v in values.items()},
              "s_per_step": {k: [round(t, 3) for t in v] for k, v in times.items()},
              "speedup_fused_vs_unfused": round(best["unfused"] / best["fused"], 3),
              "speedup_fused_vs_torch_ce": round(best["torch_ce"] / best["fused"], 3)}
    print(json.dumps(result, indent=1))
    print(f"\n{'variant':<9} {'s/step (best)':>13} {'loss/token':>10}")
    for k in variants:
        print(f"{k:<9} {best[k]:>13.3f} {values[k]:>10.4f}")
    print(f"fused is {result['speedup_fused_vs_unfused']:.2f}x unfused, {result['speedup_fused_vs_torch_ce']:.2f}x torch_ce")
    return 0


if __name__ == "__main__":
    sys.exit(main())
