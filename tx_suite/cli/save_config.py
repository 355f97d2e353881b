"""Save the resolved config of a run into its run directory (and into the W&B run's config)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback

from tx_suite.utils.config import BATCH_LIMIT_KEYS


def _with_trainer_batch_limits(config: dict, trainer: Trainer) -> bool:
    """Write the trainer's own ``limit_*_batches`` into ``config["trainer"]`` where the parser's
    float differs in kind (``1.0`` = all batches, ``1`` = one); True if anything changed."""
    section = config.get("trainer")
    changed = False
    for key in BATCH_LIMIT_KEYS:
        actual = getattr(trainer, key, None)
        if isinstance(section, dict) and isinstance(actual, int) and not isinstance(actual, bool) \
                and isinstance(section.get(key), float) and section[key] == actual:
            section[key] = actual
            changed = True
    return changed


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to ``<run_dir>/config.yaml`` (``config.resume-<time>.yaml`` when a
    resumed run already has one) and adds it to the W&B run's config, with the trainer's
    ``limit_*_batches`` as the trainer has them (an integer stays one)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(self.config["trainer"]["default_root_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / self.config_filename
            if path.exists():
                path = run_dir / f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(saved, dict) and _with_trainer_batch_limits(saved, trainer):
                path.write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                dump = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
                _with_trainer_batch_limits(dump, trainer)
                logger.experiment.config.update({"cli": dump}, allow_val_change=True)
