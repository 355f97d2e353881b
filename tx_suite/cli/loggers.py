"""The local run record: a CSVLogger that writes ``metrics.csv`` straight into the run directory."""

from __future__ import annotations

import csv
import os
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _ResumableWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv`` when the directory is not empty; a
    resumed run must append to it instead, keeping the columns it already has."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv`` (and ``hparams.yaml``) with no sub-folders.

    The CLI sets ``save_dir`` to the run directory. On ``--ckpt_path last`` the same file is
    appended to, so one run has one metrics record across resumptions.
    """

    def __init__(
        self,
        save_dir: str = ".",
        name: str = "",
        version: str = "",
        prefix: str = "",
        flush_logs_every_n_steps: int = 50,
    ) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
