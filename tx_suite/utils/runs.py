"""Run directories: ``<runs_dir>/<experiment>/<run_id>/`` (plain Python, no Lightning).

Layout of one run::

    runs/<experiment>/<run_id>/
        config.yaml         resolved config (written by the CLI)
        run_info.json       seed, versions, git commit, command line, host, times
        metrics.csv         CSVLogger record of every logged metric
        checkpoints/        best.ckpt (monitored metric) and last.ckpt
        wandb/              the W&B run (offline unless an API key is configured)
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
#: Environment variable naming the runs root; ``tx-suite fit|validate|test|predict --runs_dir`` sets
#: it for the duration of the command, so ``<experiment>:best`` references inside configs (a
#: stage-2 model's tokenizer) resolve in the same root.
RUNS_DIR_ENV = "TX_SUITE_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunLookupError(FileNotFoundError):
    """No run/checkpoint matches a ``last``/``best`` request."""


def default_runs_dir() -> str:
    """``$TX_SUITE_RUNS_DIR`` if set (``~`` expanded), else ``runs`` (relative to the working directory)."""
    return os.path.expanduser(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def validate_name(name: str, what: str = "experiment") -> str:
    """Return ``name`` if it is safe as a directory name (letters, digits, ``.``, ``_``, ``-``).

    Raises:
        ValueError: the name is empty or has other characters (for example ``/`` or spaces).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def new_run_id(now: float | None = None) -> str:
    """A sortable, collision-resistant run id: ``YYYYmmdd-HHMMSS-xxxx`` (local time, 4 hex chars)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{secrets.token_hex(2)}"


def experiment_dir(runs_dir: str | Path, experiment: str) -> Path:
    return Path(runs_dir).expanduser() / validate_name(experiment)


def _newest_ckpt_mtime(run_dir: Path) -> float:
    ckpt_dir = run_dir / CHECKPOINT_DIR
    # The files a fit writes, where it has them: a file put there later (an average written into an
    # older run's checkpoints/) must not make that run the newest.
    own = [ckpt_dir / f"{name}.ckpt" for name in ("last", "best") if (ckpt_dir / f"{name}.ckpt").is_file()]
    ckpts = own or list(ckpt_dir.glob("*.ckpt"))
    return max((p.stat().st_mtime for p in ckpts), default=0.0)


def _recency(run_dir: Path) -> tuple[float, str]:
    """Sort key of runs: the newest ``last.ckpt``/``best.ckpt`` written (any checkpoint where a run has
    neither), then the run id."""
    return _newest_ckpt_mtime(run_dir), run_dir.name


def find_checkpoint(runs_dir: str | Path, experiment: str, which: str = "last", run_id: str | None = None) -> Path:
    """The ``{which}.ckpt`` of the newest run of ``experiment``, or of run ``run_id``.

    "Newest" is the run whose ``last.ckpt`` or ``best.ckpt`` was written most recently, so a resumed
    older run counts as new again (and an average written into an older run's directory does not).
    Runs without checkpoints (test/predict runs) are skipped. The newest run
    must have ``{which}.ckpt`` itself: a fit stopped before its first validation has ``last.ckpt``
    but no ``best.ckpt``, and falling back to an older run's ``best`` would evaluate other weights
    than the run just trained without saying so.

    Raises:
        RunLookupError: no run of the experiment (or run ``run_id``) has ``checkpoints/{which}.ckpt``,
            or the newest run with checkpoints lacks it (the message names the older run that has it).
    """
    exp_dir = experiment_dir(runs_dir, experiment)
    if run_id:
        path = exp_dir / validate_name(run_id, "run_id") / CHECKPOINT_DIR / f"{which}.ckpt"
        if not path.is_file():
            raise RunLookupError(f"--ckpt_path {which} with run_id {run_id}: no {path}")
        return path
    name = f"{which}.ckpt"
    runs = [p.parent for p in exp_dir.glob(f"*/{CHECKPOINT_DIR}") if any(p.glob("*.ckpt"))]
    have = [run for run in runs if (run / CHECKPOINT_DIR / name).is_file()]
    if not have:
        raise RunLookupError(
            f"--ckpt_path {which}: no {exp_dir}/*/{CHECKPOINT_DIR}/{name} found "
            f"(train first with `tx-suite fit --config ...`, or pass a checkpoint file)"
        )
    latest = max(runs, key=_recency)
    if latest not in have:
        why = " (a fit stopped before its first validation writes none)" if which == "best" else ""
        raise RunLookupError(
            f"--ckpt_path {which}: the newest run of {experiment}, {latest}, has no {name}{why}; give a "
            f"checkpoint file instead, e.g. the older run's {max(have, key=_recency) / CHECKPOINT_DIR / name}"
        )
    return latest / CHECKPOINT_DIR / name


def resolve_checkpoint(spec: str | Path, runs_dir: str | Path | None = None, kind: str = "",
                       hint: str = "train it first with `tx-suite fit --config ...`") -> Path:
    """A checkpoint file from a path or from ``"<experiment>:best"`` / ``"<experiment>:last"``.

    The experiment form is :func:`find_checkpoint` (that checkpoint of the newest run of the
    experiment), so a stage-2 config or a command can name a checkpoint without knowing the run
    id. ``runs_dir`` defaults to :func:`default_runs_dir`.

    Raises:
        FileNotFoundError: no such file, or no run of the experiment has that checkpoint (the
            message starts with ``kind``, e.g. "VQ-VAE checkpoint not found", and ends with
            ``hint``, where ``{name}`` stands for the experiment), or only an older run than the
            newest has it (the message names that run's file).
    """
    what = f"{kind} checkpoint" if kind else "checkpoint"
    runs_dir = default_runs_dir() if runs_dir is None else runs_dir
    path = Path(spec)
    if path.is_file():
        return path
    name, sep, which = str(spec).rpartition(":")
    if sep and which in ("best", "last") and _NAME_RE.match(name):
        try:
            return find_checkpoint(runs_dir, name, which)
        except RunLookupError as err:
            runs = Path(runs_dir).expanduser() / name
            if any(runs.glob(f"*/{CHECKPOINT_DIR}/{which}.ckpt")):  # an older run has it, not the newest
                raise FileNotFoundError(f"{what} not found: {spec!r}: {err}") from None
            other = "last" if which == "best" else "best"
            if any(runs.glob(f"*/{CHECKPOINT_DIR}/{other}.ckpt")):  # trained, but not this file: no point training it again
                fix = f"its runs have {name}:{other} only"
            else:
                fix = hint.format(name=name)
            raise FileNotFoundError(f"{what} not found: {spec!r}: no {runs}/*/{CHECKPOINT_DIR}/{which}.ckpt ({fix})") from None
    if path.is_dir():
        raise FileNotFoundError(f"{what} not found: {spec} is a directory (give a .ckpt file in it, "
                                "e.g. checkpoints/best.ckpt)")
    if sep and _NAME_RE.match(name) and not path.parent.name:
        raise FileNotFoundError(f"{what} not found: {spec} (EXPERIMENT:best or EXPERIMENT:last, not :{which})")
    raise FileNotFoundError(f"{what} not found: {spec}")


def run_dir_of_checkpoint(ckpt_path: str | Path, runs_dir: str | Path) -> Path | None:
    """The run directory holding ``ckpt_path`` if it is ``<runs_dir>/<exp>/<id>/checkpoints/*.ckpt``.

    The path is made absolute without following links (``checkpoints/`` or a run directory may be
    a link to another disk: resolved, the checkpoint looked like one outside the runs, and the
    resume went to a new run); only the runs root is compared with links resolved.
    """
    ckpt = Path(os.path.abspath(Path(ckpt_path).expanduser()))
    root = Path(runs_dir).expanduser().resolve()
    if ckpt.parent.name != CHECKPOINT_DIR:
        return None
    run_dir = ckpt.parent.parent
    if run_dir.parent.parent.resolve() != root:
        return None
    return run_dir
