"""``tx-suite fit|validate|test|predict``: LightningCLI with run directories, W&B and safe checkpoints.

What this adds to :class:`pytorch_lightning.cli.LightningCLI` (see docs/cli.md):

* ``_base_`` config inheritance, expanded before parsing (:mod:`tx_suite.utils.config`);
* top-level keys ``experiment`` (default: the last config file's stem, skipping
  trainer-only diffs such as ``experiments/scale/ddp.yaml``), ``runs_dir``, ``run_id``,
  ``tags`` and a ``checkpoint`` group (a ModelCheckpoint, :class:`RunCheckpoint`, writing ``best.ckpt`` and an
  always-current ``last.ckpt``);
* one directory per run, ``<runs_dir>/<experiment>/<run_id>/``, shared by the trainer, the
  loggers (``metrics.csv`` + W&B) and the checkpoints, with ``config.yaml`` and ``run_info.json``;
* ``--ckpt_path last|best`` resolved from the newest run; ``fit`` with a checkpoint of a run
  resumes that run in place (same directory, same W&B id);
* W&B online/offline/disabled chosen without ever hanging (:mod:`tx_suite.utils.wandb_mode`);
* always-on safety: atomic checkpoint writes, ``weights_only=True`` loads, RNG state in
  checkpoints, a stop on non-finite loss; a fixed default seed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO

from tx_suite.cli.loggers import configure_loggers, finish_wandb, has_wandb, start_wandb
from tx_suite.cli.parser import TxArgumentParser
from tx_suite.cli.save_config import SaveRunConfig
from tx_suite.tasks.callbacks import (AtomicCheckpointIO, PredictionWriter, RestoreLoaderState, RNGStateCallback,
                                     RunCheckpoint, StopOnNonFiniteLoss)
from tx_suite.utils.checkpoint import CheckpointError, load_checkpoint
from tx_suite.utils.config import (ConfigError, config_paths, default_experiment_name, expand_config_argv,
                                  integer_batch_limits, load_config)
from tx_suite.utils.run_info import collect_run_info, write_json
from tx_suite.utils.runs import (
    CHECKPOINT_DIR,
    RUNS_DIR_ENV,
    default_runs_dir,
    find_checkpoint,
    new_run_id,
    resolve_checkpoint,
    run_dir_of_checkpoint,
    validate_name,
)
from tx_suite.utils.wandb_mode import resolve_wandb_mode

DEFAULT_SEED = 1234
RUN_INFO = "run_info.json"


class _DropLitLoggerTip(logging.Filter):
    """Lightning 2.6 advertises a cloud logger on every run; we log to W&B + CSV."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLitLoggerTip())


def _log(msg: str) -> None:
    print(f"tx-suite: {msg}", file=sys.stderr, flush=True)


#: Set by rank 0 for the processes that Lightning's DDP launcher starts, so they share its run id.
RUN_ID_ENV = "TX_SUITE_RUN_ID"
#: Where W&B stages artifact files (logged tables); set to the run's wandb/ folder for the run.
WANDB_DATA_DIR_ENV = "WANDB_DATA_DIR"


def _launcher_vars(*names: str) -> list[str]:
    """``names`` without the SLURM ones when Lightning ignores SLURM: a job named ``bash`` or
    ``interactive`` (``salloc``, ``srun --job-name=interactive``) launches its processes by other
    means (Lightning's ``SLURMEnvironment.detect``), though ``SLURM_NTASKS`` is set."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return [n for n in names if not n.startswith("SLURM_")]
    return list(names)


def launcher_rank() -> int:
    """This process's global rank as its launcher announced it (torchrun, SLURM, Lightning's DDP
    launcher), known before the Trainer exists; 0 for a single process. Only rank 0 writes the run
    directory, run_info.json and the W&B run; Lightning keeps checkpoints and loggers on rank 0."""
    for var in _launcher_vars("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var])
    local, node = (int(os.environ.get(v, "0") or 0) for v in ("LOCAL_RANK", "NODE_RANK"))
    return local + node  # Lightning's launcher sets only these; nonzero means "not the main process"


def launcher_world_size() -> int:
    """Number of processes that torchrun, SLURM or jsrun started for this job; 1 otherwise (also
    under Lightning's own launcher, which starts its other ranks later, from rank 0)."""
    for var in _launcher_vars("WORLD_SIZE", "SLURM_NTASKS", "JSM_NAMESPACE_SIZE"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var])
    return 1


def random_seed(run_id: str | None) -> int:
    """The seed for ``seed_everything: true``, in [0, 2**32).

    A process that Lightning's launcher started takes rank 0's (``PL_GLOBAL_SEED``). Processes
    that torchrun or SLURM started choose at the same time, apart: they derive it from the
    ``--run_id`` they share, since different seeds would give each rank its own data order
    (the samplers are seeded with it) and shards that overlap. A single process draws one.

    Raises:
        ValueError: several externally launched processes and no ``run_id``.
    """
    inherited = os.environ.get("PL_GLOBAL_SEED")
    if inherited:
        return int(inherited)
    if launcher_world_size() > 1:
        if not run_id:
            raise ValueError("seed_everything: true with processes started by torchrun or SLURM needs the same "
                             "--run_id on every rank (the seed is derived from it), or set a seed")
        return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big")
    return random.SystemRandom().randrange(2**32)


def explicit_model_keys(argv: list[str]) -> set[str]:
    """Names set by ``--model.init_args.K`` / ``--model.K`` arguments (``=value`` or a separate value)."""
    keys = set()
    for arg in argv:
        m = re.match(r"--model\.(?:init_args\.)?([A-Za-z_]\w*)(?:=|$)", arg)
        if m and m.group(1) not in ("class_path", "init_args", "dict_kwargs"):
            keys.add(m.group(1))
    return keys


def _class_path(entry: Any) -> str | None:
    """The ``class_path`` of a parsed config entry (a Namespace or dict), the class of an instance,
    or None (no entry, a plain string such as ``strategy: ddp``, no class_path)."""
    if entry is None or isinstance(entry, str):
        return None
    if isinstance(entry, (Namespace, dict)):
        value = entry.get("class_path")
        return value if isinstance(value, str) else None
    return type(entry).__module__ + "." + type(entry).__qualname__


def _import_class(class_path: str | None) -> type | None:
    """The class a parsed config names, or None when it cannot be imported (jsonargparse reports that)."""
    if not class_path or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _plain(value: Any) -> Any:
    """A config value comparable with a checkpoint's hyper-parameter (Namespaces and tuples unwrapped)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_file_model_keys(argv: list[str]) -> set[str]:
    """Names under ``model`` (or ``model.init_args``) in the ``--config`` files of a command line,
    with their ``_base_`` files, and in a ``--model FILE``; unreadable files are skipped (the parser
    reports them)."""
    keys: set[str] = set()
    models: list[Any] = []
    for path in config_paths(argv):
        try:
            models.append(load_config(path).get("model"))
        except (ConfigError, OSError):
            continue
    # `--model file.yaml` (jsonargparse reads it as the model section itself)
    for i, token in enumerate(argv):
        value = token.split("=", 1)[1] if token.startswith("--model=") else (
            argv[i + 1] if token == "--model" and i + 1 < len(argv) else None)
        if value and Path(value).suffix.lower() in (".yaml", ".yml") and Path(value).is_file():
            try:
                models.append(load_config(value))
            except (ConfigError, OSError):
                continue
    for model in models:
        if not isinstance(model, dict):
            continue
        init_args = model.get("init_args")
        keys |= set(init_args) if isinstance(init_args, dict) else set()
        keys |= set(model) - {"class_path", "init_args", "dict_kwargs"}
    return keys


def _is(entry: Any, *names: str) -> bool:
    """True if the config entry's class name (last dotted part) is one of ``names``."""
    return (_class_path(entry) or "").rsplit(".", 1)[-1] in names


def check_accelerator(accelerator: Any, strategy: Any = None, devices: Any = None) -> None:
    """Fail early, with the fix, when a config asks for a GPU this machine does not have.

    Lightning's own error ("No supported gpu backend found!") names neither the setting nor the
    way out; GPU configs (``experiments/vision/cifar10_vit.yaml``) set ``trainer.accelerator: gpu``.

    The suggested fix also names ``--trainer.devices`` when the config asks for every device
    (``devices: -1``, as ``experiments/scale/ddp.yaml``), which the CPU accelerator refuses.

    Raises:
        ValueError: ``accelerator`` is ``"gpu"``, ``"cuda"`` or ``"mps"`` and no such device is
            available.
    """
    if not isinstance(accelerator, str):
        return  # an Accelerator instance or a class_path: Lightning decides
    import torch

    name = accelerator.lower()
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if (name == "gpu" and not (cuda or mps)) or (name == "cuda" and not cuda) or (name == "mps" and not mps):
        # devices -1 ("all") and "auto" mean something to a GPU accelerator; the CPU one needs a count
        all_devices = str(devices).strip() in ("-1", "auto")
        if "fsdp" in (_class_path(strategy) or str(strategy or "")).lower():
            raise ValueError(f"trainer.accelerator={accelerator} but this machine has no such device; the FSDP "
                             "strategy (experiments/scale/fsdp.yaml) runs on CUDA GPUs only: drop it to run on "
                             "the CPU, e.g. with experiments/scale/ddp.yaml --trainer.accelerator=cpu "
                             "--trainer.devices=2")
        fix = "--trainer.accelerator=cpu --trainer.devices=N (N processes)" if all_devices else \
            "--trainer.accelerator=cpu"
        raise ValueError(f"trainer.accelerator={accelerator} but this machine has no such device "
                         f"(torch.cuda.is_available() is {cuda}); add {fix} to "
                         "run on the CPU (slow for GPU-sized configs)")


_SUBCOMMAND_HELP = {
    "--ckpt_path": "A checkpoint file a tx-suite run wrote, or `last` / `best`: that file of the newest run of "
                   "--experiment under --runs_dir (of --run_id's run if given). fit resumes it in place; the "
                   "model's architecture comes from the checkpoint (docs/cli.md).",
    "--weights_only": "tx-suite checks every --ckpt_path with torch.load(weights_only=True) first and refuses a "
                      "file that needs false, whatever this says; null means true.",
}
_SUBCOMMAND_EPILOG = ("Also: --deterministic is short for --trainer.deterministic=true; a --config file may "
                      "inherit others with `_base_: [file.yaml, ...]` (docs/cli.md).")


class TxSuiteCLI(LightningCLI):
    """LightningCLI for tx-suite; use :func:`run_cli` (or ``tx-suite``) rather than this class."""

    def __init__(self, *, default_experiment: str, state: dict[str, Any], **kwargs: Any) -> None:
        self._default_experiment = default_experiment
        self.state = state
        kwargs.setdefault("parser_class", TxArgumentParser)
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("trainer_defaults",
                          {"callbacks": [StopOnNonFiniteLoss(), RNGStateCallback(), RestoreLoaderState(),
                                        PredictionWriter()]})
        self._ckpt_global_step: int | None = None  # of --ckpt_path, set while parsing (after_fit reads it)
        self._run_id_picked_checkpoint = False  # `--ckpt_path best|last` resolved in run_id's run
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ parser
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=Optional[str], default=self._default_experiment,
            help="Experiment name: groups runs under <runs_dir>/<experiment>/ and in W&B "
                 "(default: the last --config file's name without .yaml, skipping files that set "
                 "only trainer keys, such as experiments/scale/*.yaml).",
        )
        parser.add_argument(
            "--runs_dir", type=str, default=default_runs_dir(),
            help="Root of the run directories (default: $TX_SUITE_RUNS_DIR or 'runs').",
        )
        parser.add_argument("--run_id", type=Optional[str], default=None,
                            help="Name of the run directory (default: <date>-<time>-<random>).")
        parser.add_argument("--tags", type=list[str], default=[], help="W&B tags for the run.")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.filename": "best",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,
        })

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Lightning's help describes its own meanings ("best" of the previous trainer.fit call in
        # this process, a model registry), which are not what `tx-suite` does with these options.
        for option, text in _SUBCOMMAND_HELP.items():
            action = parser._option_string_actions.get(option)
            if action is not None:
                action.help = text
        parser.epilog = _SUBCOMMAND_EPILOG
        return parser

    # ------------------------------------------------------------ ckpt_path
    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``/``best``, check the file (weights_only) and apply its hyperparameters."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path in ("last", "best"):
            experiment = validate_name(cfg.get("experiment") or self._default_experiment)
            # With a run_id (a run's config.yaml names its own), that run's checkpoint, not the newest run's.
            resolved = find_checkpoint(cfg.runs_dir, experiment, ckpt_path, run_id=cfg.get("run_id"))
            self._run_id_picked_checkpoint = bool(cfg.get("run_id"))
            _log(f"--ckpt_path {ckpt_path} -> {resolved}")
            ckpt_path = cfg.ckpt_path = str(resolved)
        elif re.fullmatch(r"[^/:]+:(best|last)", str(ckpt_path)) and not Path(ckpt_path).exists():
            # EXPERIMENT:best, as the translate/classify/generate commands and stage-2 configs take it
            resolved = resolve_checkpoint(ckpt_path, cfg.runs_dir)
            _log(f"--ckpt_path {ckpt_path} -> {resolved}")
            ckpt_path = cfg.ckpt_path = str(resolved)
        ckpt = load_checkpoint(ckpt_path)
        self._ckpt_global_step = ckpt.get("global_step")
        if not isinstance(ckpt.get("state_dict"), dict) or "pytorch-lightning_version" not in ckpt:
            raise CheckpointError(f"{ckpt_path} is not a Lightning checkpoint (no state_dict / pytorch-lightning_version); "
                                  "--ckpt_path takes a checkpoints/*.ckpt file a tx-suite run wrote")
        if subcommand == "fit" and "optimizer_states" not in ckpt:
            # Lightning would fail only after the run directory, config and W&B run were written.
            raise CheckpointError(f"{ckpt_path} holds weights only (an averaged or weights-only checkpoint, no "
                                  "optimizer or loop state): fit cannot resume it; use it with "
                                  "validate/test/predict or translate/classify/generate")
        hparams = dict(ckpt.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        model_cfg = cfg.get("model")
        init_args = model_cfg.get("init_args") if isinstance(model_cfg, Namespace) else None
        model_class = _import_class(_class_path(model_cfg))
        # Notes on what is taken from where wait until the checkpoint is known to be this task's:
        # before an error saying it is another task's, they would describe a load that never happens.
        notes: list[str] = []
        # Starting weights (a fine-tuning run's `pretrained`) are in the checkpoint's state_dict;
        # re-reading their source would fail once the file is gone or the machine is offline.
        for key in getattr(model_class, "WEIGHT_SOURCE_HPARAMS", ()):
            hparams.pop(key, None)
            if isinstance(init_args, Namespace) and init_args.get(key):
                notes.append(f"--ckpt_path: not loading model.{key} ({init_args[key]}); the checkpoint holds the weights")
                init_args[key] = None
        # The checkpoint's values override the config files (the architecture must match the
        # weights), but not a --model.* argument on the command line (a deliberate choice, e.g.
        # test-time --model.init_args.beam_size=1 as docs/translation.md shows), nor a config
        # file's value of an argument that does not shape the weights (the task's RUNTIME_HPARAMS).
        argv = sys.argv[1:]
        explicit = sorted(set(hparams) & explicit_model_keys(argv))
        in_files = config_file_model_keys(argv)
        runtime = sorted((set(hparams) & in_files & set(getattr(model_class, "RUNTIME_HPARAMS", ()))) - set(explicit))
        def differ(key: str) -> bool:
            return isinstance(init_args, Namespace) and key in init_args and _plain(init_args[key]) != _plain(hparams[key])

        if explicit:
            notes.append(f"--ckpt_path: the command line's model.{', model.'.join(explicit)} over the checkpoint's")
        changed = [k for k in runtime if differ(k)]
        if changed:
            notes.append("--ckpt_path: the config's " + ", ".join(f"model.{k}={_plain(init_args[k])!r}" for k in changed)
                 + " over the checkpoint's")
        for key in (*explicit, *runtime):
            hparams.pop(key)
        kept = sorted(k for k in set(hparams) & in_files if differ(k))
        if kept:
            notes.append("--ckpt_path: the checkpoint's " + ", ".join(f"model.{k}={hparams[k]!r}" for k in kept)
                 + " over the config's (the weights need them)")
        if not hparams:
            for note in notes:
                _log(note)
            return
        if "_class_path" in hparams:
            # Class names, not paths: a config may name the class by a shorter import path.
            stored = str(hparams["_class_path"]).rsplit(".", 1)[-1]
            configured = (_class_path(cfg.get("model")) or "").rsplit(".", 1)[-1]
            if configured and stored != configured:
                raise CheckpointError(f"{ckpt_path} holds a {stored} checkpoint, but the config's model is {configured}; "
                                      "pass the config it was trained with (its run's config.yaml)")
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        elif _class_path(cfg.get("model")):
            # Saved by a task built in Python (benchmarks/translation_train.py, a plain
            # pl.Trainer), not by LightningCLI: no class recorded, so the config's class it is,
            # if the stored arguments are that class's (else it is another task's checkpoint).
            params = inspect.signature(model_class).parameters if model_class else None
            if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                foreign = sorted(set(hparams) - set(params))
                if foreign:
                    raise CheckpointError(
                        f"{ckpt_path} holds arguments that {model_class.__name__} does not take "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): a checkpoint of "
                        "another task? Pass the config it was trained with (its run's config.yaml)")
            hparams = {"class_path": _class_path(cfg.get("model")), "dict_kwargs": hparams}
        for note in notes:
            _log(note)
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"tx-suite: error: the hyperparameters stored in {ckpt_path} do not fit the model config\n")
            raise

    def _set_seed(self) -> None:
        # `seed_everything: true` should pick a random seed; Lightning 2.6 picks 0 every time.
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        # A resumed fit continues its run with the run's own seed: the resumable train loaders order
        # each epoch by `seed + epoch` (PL_GLOBAL_SEED), so another seed (a new random one for
        # `seed_everything: true`, or the config's default for a run started with --seed_everything=N)
        # would train the rest of the run on other batches than the uninterrupted run.
        recorded = self._resumed_run_seed(cfg)
        if recorded is not None and cfg.get("seed_everything") is not False and cfg.get("seed_everything") != recorded:
            _log(f"resuming with the run's seed_everything={recorded} (not {cfg.get('seed_everything')!r})")
            cfg["seed_everything"] = recorded
        if cfg.get("seed_everything") is True:
            cfg["seed_everything"] = random_seed(cfg.get("run_id"))
        super()._set_seed()

    def _resumed_run_seed(self, cfg: Any) -> int | None:
        """The seed recorded in ``run_info.json`` of the run that ``fit --ckpt_path`` continues, else None."""
        if self.subcommand != "fit" or not cfg.get("ckpt_path") or not cfg.get("runs_dir"):
            return None
        run_dir = run_dir_of_checkpoint(cfg.ckpt_path, Path(cfg.runs_dir).expanduser())
        if run_dir is None:
            return None
        try:
            seed = json.loads((run_dir / RUN_INFO).read_text()).get("seed")
        except (OSError, ValueError, AttributeError):
            return None
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    # ---------------------------------------------------------- run directory
    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        cfg = self.config[subcommand]
        check_accelerator(cfg.trainer.get("accelerator"), cfg.trainer.get("strategy"), cfg.trainer.get("devices"))
        experiment = validate_name(cfg.experiment or self._default_experiment)
        cfg.experiment = experiment
        # Lightning expands `~` in its own paths; without this a run would be split over ./~ and $HOME.
        runs_dir = Path(cfg.runs_dir).expanduser()
        cfg.runs_dir = str(runs_dir)
        # `<experiment>:best` references in the model config (a stage-2 tokenizer) and DDP processes
        # started later resolve under the same root; restored by run_cli.
        os.environ[RUNS_DIR_ENV] = str(runs_dir)

        run_dir = None
        if subcommand == "fit" and cfg.get("ckpt_path"):
            run_dir = run_dir_of_checkpoint(cfg.ckpt_path, runs_dir)
        resumed = run_dir is not None
        if resumed and run_dir.parent.name != experiment:  # a run belongs to the experiment it started in
            _log(f"resuming {run_dir}: experiment {run_dir.parent.name!r} (not {experiment!r})")
            experiment = cfg.experiment = run_dir.parent.name
        rank_zero = launcher_rank() == 0
        if run_dir is None:
            # Other ranks take rank 0's choice (it may have replaced the config's run_id, below).
            run_id = cfg.run_id if rank_zero else (os.environ.get(RUN_ID_ENV) or cfg.run_id)
            given = any(a == "--run_id" or a.startswith("--run_id=") for a in sys.argv[1:])
            if rank_zero and run_id and (runs_dir / experiment / run_id).exists() and (
                    not given or self._run_id_picked_checkpoint):
                # A run's config.yaml names its run_id, or `--run_id X --ckpt_path best` chose X's
                # checkpoint: re-running or testing it makes a run of its own (resuming it is
                # `fit --ckpt_path last`, which finds that run's checkpoint).
                source = "chose the checkpoint" if given else "from a config file"
                _log(f"run_id {run_id} ({source}) is an existing run; this {subcommand} run gets a new id")
                run_id = None
            run_id = validate_name(run_id, "run_id") if run_id else new_run_id()
            run_dir = runs_dir / experiment / run_id
            if rank_zero and run_dir.exists():  # other ranks find rank 0's directory already made
                raise FileExistsError(f"run directory already exists: {run_dir} (choose another --run_id)")
            if rank_zero:
                os.environ[RUN_ID_ENV] = run_id  # inherited by DDP processes started later; cleared by run_cli
        # config.yaml names its run, so `--config runs/E/<id>/config.yaml --ckpt_path last` finds it.
        cfg.run_id = run_dir.name
        previous = {}
        if resumed and (run_dir / RUN_INFO).is_file():
            try:
                previous = json.loads((run_dir / RUN_INFO).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:  # unreadable: kept aside, the resume records itself
                kept = run_dir / f"{RUN_INFO}.unreadable"
                try:
                    shutil.copy2(run_dir / RUN_INFO, kept)
                    where = f"kept as {kept.name}"
                except OSError:
                    where = "not copied either"
                _log(f"{run_dir / RUN_INFO} cannot be read ({type(e).__name__}); {where}")
            if not isinstance(previous, dict):
                previous = {}

        if resumed:  # expected when continuing a run in place
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if subcommand != "fit":  # the checkpoint callback is idle outside fit; its restored state is moot
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        mode, warning = resolve_wandb_mode()
        if warning:
            _log(warning)
        if mode in ("offline", "disabled"):
            # wandb-core reads the process's WANDB_MODE, not the run's `mode`: an offline run under
            # an unset (or overridden "online") WANDB_MODE still posts its usage metrics to the server.
            os.environ["WANDB_MODE"] = mode  # for this command only: run_cli puts the old value back
        # A W&B sweep agent names the run it started in WANDB_RUN_ID; the run must keep that id to
        # count for the sweep. A resumed run keeps its own.
        wandb_id = (previous.get("wandb") or {}).get("id") or os.environ.get("WANDB_RUN_ID") or run_dir.name

        trainer = cfg.trainer
        trainer.default_root_dir = str(run_dir)
        cfg.checkpoint.dirpath = str(run_dir / CHECKPOINT_DIR)
        # The run's own logger settings (W&B id, mode, log_model off when offline, tags folded in)
        # are decided per run: config.yaml keeps the logger as given, so re-running it decides anew.
        self.save_config_kwargs["logger_as_given"] = copy.deepcopy(trainer.logger)
        trainer.logger = configure_loggers(
            trainer.logger, run_dir=run_dir, experiment=experiment, subcommand=subcommand,
            tags=list(cfg.tags or []), wandb_mode=mode, wandb_id=wandb_id,
        )
        if has_wandb(trainer.logger) and not os.environ.get(WANDB_DATA_DIR_ENV):
            # W&B stages the files of logged tables (their images too) in its data directory,
            # ~/.local/share/wandb by default, and an offline run's record points there: `wandb sync`
            # of a copied or cleaned-up run would lose them. Keep them in the run's own wandb/.
            os.environ[WANDB_DATA_DIR_ENV] = str(run_dir / "wandb")
        if isinstance(trainer.callbacks, list):
            # Lightning raises on these combinations; the switch wins over the base config's callback.
            if trainer.logger is False:
                trainer.callbacks = [c for c in trainer.callbacks if not _is(c, "LearningRateMonitor")]
            if trainer.get("enable_progress_bar") is False:
                trainer.callbacks = [c for c in trainer.callbacks if not _is(c, "TQDMProgressBar", "RichProgressBar")]
        if cfg.get("weights_only") is None and "weights_only" in cfg:
            cfg.weights_only = True  # never unpickle arbitrary objects from a checkpoint

        self.state.update(
            run_dir=run_dir, resumed=resumed, experiment=experiment, subcommand=subcommand,
            wandb_mode=mode if has_wandb(trainer.logger) else None, wandb_id=wandb_id,
            previous_info=previous, rank_zero=rank_zero,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add :class:`AtomicCheckpointIO` unless the config already names a CheckpointIO plugin; turn
        off Lightning's sampler injection for data modules that shard their own batches; keep
        ``limit_*_batches`` written as integers (see :data:`BATCH_LIMIT_KEYS`)."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else (list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        trainer_config = self._get(self.config_init, "trainer", default={})
        for key, value in integer_batch_limits(sys.argv[1:]).items():
            if trainer_config.get(key) == value:  # jsonargparse made it a float: 1 batch would be 100 %
                kwargs[key] = value
        if getattr(self.datamodule, "shards_batches", False):
            # Its batch sampler shards over the ranks itself; Lightning's injection would fail on it.
            kwargs["use_distributed_sampler"] = False
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Say so when a resumed fit had nothing left to train (it would otherwise end silently)."""
        start = self._ckpt_global_step
        trainer = self.trainer
        if start is None or trainer.global_step != start or not trainer.is_global_zero:
            return
        at = f"the checkpoint is at step {start}, epoch {trainer.current_epoch}"
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        if (max_steps is not None and 0 <= max_steps <= start) or (
                max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch):
            _log(f"nothing to train: {at}, already at trainer.max_epochs/max_steps; raise them to train further")
            return
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        if timer is not None and (timer.time_remaining() or 0) <= 0:
            # Lightning restores the Timer's elapsed time with the checkpoint.
            _log(f"nothing to train: {at}, and the run's trainer.max_time is used up (the time already "
                 "trained is restored from the checkpoint); raise --trainer.max_time to train further")
            return
        _log(f"nothing to train: {at}; the fit stopped before its first step")

    def after_instantiate_classes(self) -> None:
        if self.subcommand is None or not self.state.get("rank_zero", True):
            return
        run_dir: Path = self.state["run_dir"]
        try:
            # A new run claims its directory here, atomically: two runs started with the same
            # --run_id both passed the exists() check at parse time, then wrote into one directory.
            run_dir.mkdir(parents=True, exist_ok=self.state["resumed"])
        except FileExistsError:
            raise FileExistsError(f"run directory already exists: {run_dir} (another run took this run_id; "
                                  "choose another --run_id)") from None
        self.state["trainer"] = self.trainer  # _finish asks it whether anything was logged
        self.state.update(start_wandb(self.trainer.loggers, _log))
        cfg = self.config[self.subcommand]
        record = collect_run_info(
            command=self.state.get("command"),
            experiment=self.state["experiment"],
            run_id=run_dir.name,
            subcommand=self.subcommand,
            seed=cfg.get("seed_everything"),
            deterministic=cfg.trainer.get("deterministic"),
            ckpt_path=cfg.get("ckpt_path"),
            model=_class_path(cfg.model),
            data=_class_path(cfg.data) if cfg.get("data") else None,
            wandb={"mode": self.state.get("wandb_mode"), "id": self.state.get("wandb_id")},
            status="running",  # until the run ends; a killed run keeps this
        )
        if self.state["resumed"] and self.state["previous_info"]:
            info = dict(self.state["previous_info"])
            info.setdefault("resumes", []).append(record)
            _log(f"resuming run {run_dir} from {cfg.ckpt_path}")
        elif self.state["resumed"]:  # no (readable) run_info.json: this resume's record stands for the run
            info = record
            _log(f"resuming run {run_dir} from {cfg.ckpt_path} (it had no run_info.json)")
        else:
            info = record
            _log(f"run directory: {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / RUN_INFO, info)
        self.state["info"] = info

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True  # never unpickle arbitrary objects from a checkpoint
        return kwargs


def _finish(state: dict[str, Any], status: str) -> None:
    """Record the end of the run in run_info.json, close W&B, print the sync command if offline."""
    run_dir = state.get("run_dir")
    if run_dir is None or "info" not in state:
        return
    info = state["info"]
    target = info["resumes"][-1] if info.get("resumes") else info
    target["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    target["status"] = status
    if state.get("error"):
        target["error"] = state["error"]
    if state.get("wandb_mode"):
        target["wandb"] = {"mode": state.get("wandb_mode"), "id": state.get("wandb_id"), "dir": state.get("wandb_dir")}
    trainer = state.get("trainer")
    saver = next((cb for cb in getattr(trainer, "callbacks", None) or [] if isinstance(cb, SaveRunConfig)), None)
    if state.get("resumed") and status != "finished" and saver is not None and saver.resume_pending:
        target["trained"] = False  # ended before training: `compare` keeps the run's earlier status
    write_json(Path(run_dir) / RUN_INFO, info)
    finish_wandb(status)
    if (status == "failed" and not state.get("resumed") and state.get("rank_zero")
            and not getattr(trainer, "logged_metrics", None) and _holds_no_results(Path(run_dir))):
        # Failed before anything was logged (a wrong data path, a bad argument found late): an
        # empty run would only be found by `compare` and `--ckpt_path last`. The error is on stderr.
        shutil.rmtree(run_dir, ignore_errors=True)
        _log(f"removed {run_dir}: the run failed before it logged a metric or wrote a file")
        return
    if state.get("wandb_mode") == "offline" and state.get("wandb_dir"):
        _log(f"W&B run saved offline; upload it with: wandb sync {state['wandb_dir']}")
    last = Path(run_dir) / CHECKPOINT_DIR / "last.ckpt"
    if status == "interrupted" and state.get("subcommand") == "fit" and last.is_file():
        _log(f"interrupted; continue this run with: {resume_command(state.get('command') or ['tx-suite'], last)}")


#: What every run directory gets before its first step; a failed run with nothing else is removed.
_RUN_SETUP_FILES = {RUN_INFO, "config.yaml", "hparams.yaml", "wandb", CHECKPOINT_DIR}


def _holds_no_results(run_dir: Path) -> bool:
    if not run_dir.is_dir() or any(p.name not in _RUN_SETUP_FILES for p in run_dir.iterdir()):
        return False
    checkpoints = run_dir / CHECKPOINT_DIR
    return not (checkpoints.is_dir() and any(checkpoints.iterdir()))


def resume_command(command: list[str], ckpt: Path) -> str:
    """``command`` with its ``--ckpt_path`` (if any) replaced by ``--ckpt_path <ckpt>``, shell-quoted."""
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            out.append(arg)
    return shlex.join([*out, "--ckpt_path", str(ckpt)])


@contextlib.contextmanager
def _patched_argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def preprocess_argv(args: list[str]) -> list[str]:
    """Expand ``_base_`` configs and the ``--deterministic`` switch (see docs/cli.md)."""
    args = ["--trainer.deterministic=true" if a == "--deterministic" else a for a in args]
    return expand_config_argv(args)


def run_cli(args: list[str], from_sys_argv: bool = True) -> int:
    """Run a LightningCLI sub-command (``args`` starts with fit/validate/test/predict)."""
    # Lightning 2.6 + torch >= 2.10 warns on every run about its own use of a deprecated torch API.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    configs = config_paths(args)
    default_experiment = default_experiment_name(configs)
    expanded = preprocess_argv(args)
    invoked_as = Path(sys.argv[0]).name if from_sys_argv and sys.argv else "tx-suite"
    if invoked_as == "__main__.py":
        invoked_as = "python -m tx_suite"
    state: dict[str, Any] = {"command": [invoked_as, *args]}
    if any(a.startswith("--print_config") for a in args) and any(a.startswith("--ckpt_path") for a in args):
        # jsonargparse prints while parsing, before the checkpoint's hyperparameters are read.
        _log("--print_config shows the configs and arguments as given; with --ckpt_path the checkpoint's "
             "model hyperparameters replace those that shape the weights (the run's config.yaml has the result)")
    status = "failed"
    # Lightning's DDP launcher re-runs sys.argv for the other ranks: keep the real program (the
    # console script's path; `python -m tx_suite` is re-run with -m), with the expanded configs.
    program = sys.argv[0] if from_sys_argv and sys.argv and sys.argv[0] else "tx-suite"
    # Set for this command only. WANDB_MODE too: a notebook's next fit, after `wandb login`, must
    # decide its mode afresh, not inherit an offline run's "offline"; and seed_everything's
    # PL_GLOBAL_SEED, or its next `seed_everything: true` would reuse this run's seed.
    saved_env = {k: os.environ.get(k) for k in (RUN_ID_ENV, RUNS_DIR_ENV, WANDB_DATA_DIR_ENV, "WANDB_MODE",
                                                 "PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        with _patched_argv([program, *expanded]):
            TxSuiteCLI(default_experiment=default_experiment, state=state, args=None)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SystemExit as exc:  # Lightning exits with status 1 after a graceful Ctrl-C shutdown
        if type(exc).__name__ == "SIGTERMException":
            # Lightning's stop on SIGTERM (timeout, docker stop, preemption) is a SystemExit with
            # no code, which would read as success; exit as a process killed by it would.
            status = "interrupted"
            raise SystemExit(128 + signal.SIGTERM) from exc
        status = "finished" if exc.code in (0, None) else "interrupted"
        raise
    except Exception as exc:
        from tx_suite.cli.main import one_line, root_cause

        cause = root_cause(exc)
        state["error"] = f"{type(cause).__name__}: {one_line(cause)}"  # why, in run_info.json
        raise
    finally:
        try:
            _finish(state, status)  # wandb.finish still sees the run's own WANDB_MODE and data dir
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return 0
