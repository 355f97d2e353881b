"""``tx-suite average``: average the weights of checkpoints (fairseq's ``average_checkpoints``).

    tx-suite average averaged.ckpt IN1.ckpt IN2.ckpt ...   # e.g. the last.ckpt of several runs
    tx-suite average averaged.ckpt --snapshots runs/<exp>/<run>/checkpoints/last.ckpt --last 5

The second form averages the epoch snapshots that ``CheckpointAveraging`` keeps inside a
checkpoint (see docs/translation.md).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from tx_suite.tasks.callbacks.translation_averaging import main as average_main

    return average_main(argv, prog="tx-suite average")
