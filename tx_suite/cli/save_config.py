"""Save the resolved config of a run into its run directory (and into the W&B run's config)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback

_UNSET = object()


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to ``<run_dir>/config.yaml`` (``config.resume-<time>.yaml`` when a
    resumed run already has one) and adds it to the W&B run's config.

    Args:
        logger_as_given: ``trainer.logger`` before the CLI filled in this run's logger settings;
            saved in its place, so that re-running ``config.yaml`` (online, with other tags) is
            the experiment again rather than this run's W&B decisions.
    """

    def __init__(self, *args, logger_as_given: Any = _UNSET, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if logger_as_given is not _UNSET:
            self.config = self.config.clone()
            self.config["trainer"]["logger"] = logger_as_given

    #: True while a resumed fit's config waits for its training to start (see ``setup``).
    resume_pending = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(self.config["trainer"]["default_root_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / self.config_filename
            if path.exists():
                # A resume: its config is recorded when it starts training, so one that fails
                # before (weights that do not fit, a bad override) leaves the run's record as it was.
                self.resume_pending = True
            else:
                self._save(path, trainer, pl_module, stage)
        self.already_saved = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.resume_pending and trainer.is_global_zero:
            run_dir = Path(self.config["trainer"]["default_root_dir"])
            self._save(run_dir / f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml", trainer, pl_module, "fit")
            self.resume_pending = False

    def _save(self, path: Path, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
        self.save_config(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                dump = self.parser.dump(self.config, skip_none=False, format="json")
                logger.experiment.config.update({"cli": json.loads(dump)}, allow_val_change=True)
