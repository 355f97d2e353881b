"""Shared test setup: no W&B network or files, few threads, tests/ importable, temp run dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports wandb/Lightning: W&B off (the offline test turns it back on for itself),
# no W&B prompts, and CPU threads capped (2-core CI machines run other work too).
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
# One thread count for this process and its `python -m tx_suite` subprocesses (the resume test
# compares their weights bit for bit): the user's OMP_NUM_THREADS, capped at 2.
try:
    _THREADS = max(1, min(2, os.cpu_count() or 1, int(os.environ.get("OMP_NUM_THREADS") or 2)))
except ValueError:  # e.g. a nested "2,1" setting
    _THREADS = min(2, os.cpu_count() or 1)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)
# Idle OpenMP threads sleep instead of spinning: with spinning, a step ran up to 20x slower while
# another process used a core (vision tests: 79 s vs 23 s with one core busy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # for cli_fixtures and other test helpers named in configs

torch.set_num_threads(_THREADS)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """A fresh runs/ root for CLI runs (``TX_SUITE_RUNS_DIR``), so tests never write into the repo."""
    root = tmp_path / "runs"
    monkeypatch.setenv("TX_SUITE_RUNS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _restore_environ():
    """Undo what a test left in ``os.environ`` (``pl.seed_everything`` sets ``PL_GLOBAL_SEED``, an
    in-process DDP setup ``MASTER_PORT``), so no later test or subprocess inherits it."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


#: Variables a launcher or an earlier in-process run sets that would change what a subprocess does
#: (an inherited PL_GLOBAL_SEED is taken as rank 0's seed; MASTER_PORT/RANK make it join a group).
_LAUNCH_VARS = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
                "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


@pytest.fixture
def subprocess_env(runs_dir) -> dict[str, str]:
    """Environment for ``python -m tx_suite`` subprocesses: this checkout and tests/ on the path,
    without launcher or seed variables of this process (or of the CI machine: SLURM_*)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
