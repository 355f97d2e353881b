"""Loggers of a run: the local CSV record (``metrics.csv``) and the W&B run's identity and start."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
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


WANDB_PROJECT = "tx-suite"
WANDB_INIT_TIMEOUT_S = 30


def _class_name(entry: Any) -> str:
    path = str(entry.get("class_path", "")) if isinstance(entry, (Namespace, dict)) else type(entry).__qualname__
    return path.rsplit(".", 1)[-1]


def has_wandb(logger_cfg: Any) -> bool:
    """True if a ``trainer.logger`` config value includes a WandbLogger."""
    return isinstance(logger_cfg, list) and any(_class_name(e) == "WandbLogger" for e in logger_cfg)


def default_loggers() -> list[Namespace]:
    """The loggers used when a config says ``trainer.logger: true`` or nothing: CSV + W&B."""
    return [
        Namespace(class_path="tx_suite.cli.loggers.RunCSVLogger", init_args=Namespace()),
        Namespace(class_path="pytorch_lightning.loggers.WandbLogger",
                  init_args=Namespace(project=WANDB_PROJECT, log_model=True)),
    ]


def wandb_log_model(configured: Any, wandb_mode: str) -> bool | str:
    """WandbLogger's ``log_model`` for a run: the configured value when the run is online, else False.

    ``True`` (the base config's default) uploads the best and last checkpoints as W&B model
    artifacts at the end of training, ``"all"`` every checkpoint as it is written. Offline and
    disabled runs never copy checkpoints into the W&B run: they stay in ``checkpoints/`` only.
    """
    if wandb_mode != "online" or configured is None:
        return False
    return configured


def configure_loggers(logger_cfg: Any, *, run_dir: Path, experiment: str, subcommand: str, tags: list[str],
                      wandb_mode: str, wandb_id: str) -> Any:
    """Point every logger of a ``trainer.logger`` config value at ``run_dir``.

    The W&B logger also gets the run's identity (id, name, group = experiment, job_type =
    sub-command, tags), the chosen mode, ``log_model`` (checkpoints as artifacts only when online,
    :func:`wandb_log_model`) and a bounded init timeout; it is dropped when the mode is ``disabled``. Returns the new config value (``False`` when no logger is left).
    """
    if logger_cfg is False:
        return False
    if logger_cfg is None or logger_cfg is True:
        entries = default_loggers()
    elif isinstance(logger_cfg, list):
        entries = list(logger_cfg)
    else:
        entries = [logger_cfg]
    out = []
    for entry in entries:
        if not isinstance(entry, Namespace):
            out.append(entry)  # an already-built logger object: leave it alone
            continue
        init = entry.get("init_args") or Namespace()
        name = _class_name(entry)
        if name == "WandbLogger":
            if wandb_mode == "disabled":
                continue
            init.save_dir = str(run_dir)
            init.project = init.get("project") or WANDB_PROJECT
            init.name = f"{experiment}/{run_dir.name}"
            init.id = wandb_id
            init.offline = False  # `mode` below; offline=True would set WANDB_MODE for the whole process
            # wandb.init arguments: jsonargparse resolves WandbLogger's **kwargs into init_args
            init.group = experiment
            init.job_type = subcommand
            init.tags = sorted(set(tags) | set(init.get("tags") or []))
            init.mode = wandb_mode
            init.log_model = wandb_log_model(init.get("log_model", True), wandb_mode)
            init.resume = "allow"
            init.settings = {"init_timeout": WANDB_INIT_TIMEOUT_S, "silent": True}
        elif name == "RunCSVLogger":
            init.save_dir, init.name, init.version = str(run_dir), "", ""
        elif "save_dir" in init or name == "CSVLogger":
            init.save_dir = str(run_dir)
        entry.init_args = init
        out.append(entry)
    return out if out else False


def start_wandb(loggers: list[Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Start the W&B run of any WandbLogger now, falling back to offline if an online start fails.

    Returns ``{"wandb_mode": ..., "wandb_dir": ...}`` for the run record (empty without W&B).
    """
    from pytorch_lightning.loggers import WandbLogger

    out: dict[str, Any] = {}
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        if logger._wandb_init.get("anonymous") is None:
            logger._wandb_init.pop("anonymous", None)  # wandb >= 0.22 warns on any value, even None
        try:
            run = logger.experiment  # wandb.init
        except Exception as err:  # noqa: BLE001 - no W&B failure may stop a run
            if logger._wandb_init.get("mode") == "offline":
                raise
            log(f"W&B: online start failed ({' '.join(str(err).split())[:120]}); logging offline instead")
            import wandb

            if wandb.run is not None:
                wandb.finish()
            wandb.teardown()  # the W&B service still holds the failed run's id
            logger._wandb_init["mode"] = "offline"
            logger._experiment = None
            run = logger.experiment
        out["wandb_mode"] = logger._wandb_init.get("mode")
        run_dir = Path(getattr(run, "dir", "") or "").parent  # run.dir is <run>/files
        out["wandb_dir"] = str(run_dir) if str(run_dir) not in ("", ".") else None
    return out


def finish_wandb(status: str) -> None:
    """Close an open W&B run (exit code 0 for a finished run, 1 otherwise)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if status == "finished" else 1)
