"""Sample translations after each validation: a W&B table, or a TSV file in the run directory."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from tx_suite.tasks.callbacks.log_step import metrics_log_step


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory (``runs/<experiment>/<run_id>`` under the tx-suite CLI)."""
    return Path(trainer.default_root_dir)


class TranslationSamples(pl.Callback):
    """Log (source, reference, hypothesis) for the first validation sentences every validation.

    The rows come from :attr:`TranslationTask.val_samples` (the same sentences each time, so their
    progress can be followed). With a :class:`WandbLogger` they go to the table ``val/samples``;
    the rows are also appended to ``<run dir>/val_samples.tsv`` (epoch, step, source, reference,
    hypothesis; ``step`` is the one ``metrics.csv`` logs that validation's metrics at), which needs
    no logger.

    Args:
        n: number of sentences (at most the task's ``n_samples``).
    """

    def __init__(self, n: int = 8):
        self.n = n

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end runs after the module's on_validation_epoch_end filled val_samples.
        rows = list(getattr(pl_module, "val_samples", []))[: self.n]
        if trainer.sanity_checking or not rows or not trainer.is_global_zero:
            return
        data = [[trainer.current_epoch, r["source"], r["reference"], r["hypothesis"]] for r in rows]
        # the step the validation metrics are logged at (metrics.csv, W&B), not global_step, which
        # is one ahead of it during a validation inside fit
        step = metrics_log_step(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("val/samples", columns=["epoch", "source", "reference", "hypothesis"], data=data,
                                 step=step)
        path = run_dir(trainer) / "val_samples.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write("epoch\tstep\tsource\treference\thypothesis\n")
            for (epoch, s, r, h) in data:
                f.write(f"{epoch}\t{step}\t{_tsv(s)}\t{_tsv(r)}\t{_tsv(h)}\n")


def _tsv(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")
