"""What a run was made of: versions, git state, host and command (plain Python, no Lightning)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tx_suite.utils.atomic_write import atomic_open

#: Distributions whose exact versions every run records (missing ones are recorded as None).
PACKAGES = (
    "tx-suite",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "lightning-utilities",
    "torchmetrics",
    "jsonargparse",
    "timm",
    "wandb",
    "einops",
    "tokenizers",
    "sacrebleu",
    "vector-quantize-pytorch",
    "numpy",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info(repo_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha|None, "dirty": bool|None, "branch": str|None}`` of the repository at ``repo_dir``.

    Returns Nones (never raises) when git is missing or ``repo_dir`` is not in a repository.
    """
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None}
    status = git("status", "--porcelain")  # untracked source files count: they change what runs
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
    }


def collect_run_info(command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-able record of this process: command line, host, start time, versions, git state.

    Args:
        command: the command line to record (default ``sys.argv``); the program is shortened to
            its file name.
        extra: fields such as seed, experiment, run_id, merged in first so the fixed fields stay last.
    """
    command = list(sys.argv if command is None else command)
    return {
        **extra,
        "command": [Path(command[0]).name, *command[1:]] if command else [],
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "git": git_info(),
    }


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically (:func:`tx_suite.utils.atomic_write.atomic_open`).

    On a failed write (full disk, ...) the old file is left whole and the temp file removed; the
    new file is fsynced before it replaces the old one.

    Raises:
        OSError: the write or the rename failed.
    """
    text = json.dumps(data, indent=2, default=str) + "\n"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
