"""Safe checkpoint I/O (plain torch, no Lightning).

* :func:`load_checkpoint` loads with ``torch.load(..., weights_only=True)``: tensors, primitive
  containers and numbers only, so a file carrying a pickled object (which could run code while
  loading) is refused, never executed. Every failure is one clear line (:class:`CheckpointError`).
* :func:`atomic_save` writes to a temporary file in the target directory, fsyncs it and renames it
  over the target (``os.replace`` is atomic on POSIX), so a crash or kill during a save leaves the
  previous file intact.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tx_suite.utils.atomic_write import atomic_open


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing, corrupt, not a checkpoint, or unsafe to load."""


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unsafe_reason(err: BaseException) -> str | None:
    """Why weights_only refused the file if it holds a disallowed object, else None (corrupt file)."""
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if match:
        return f"it references {match.group(1)}"
    if "Unsupported class" in text or "Can only build" in text:
        return "it holds pickled Python objects"
    return None


def _brief(text: str, limit: int = 160) -> str:
    """The first sentence of a library's error message, at most ``limit`` characters (torch appends
    paragraphs of advice after the cause)."""
    first = text.strip().split(". ", 1)[0].rstrip(".")
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def state_dict_mismatch(err: BaseException, limit: int = 300) -> str:
    """One line for torch's ``load_state_dict`` error: its first mismatched tensor, not the
    header ("Error(s) in loading state_dict for X:") nor the list of every tensor."""
    lines = [" ".join(line.split()) for line in str(err).split("\n\t")]
    return (lines[1] if len(lines) > 1 else lines[0])[:limit] or type(err).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint/weight file with ``torch.load(path, weights_only=True)``.

    Args:
        path: a file written by ``torch.save`` (Lightning ``.ckpt``, ``state_dict`` ``.pt``/``.pth``).
        map_location: passed to :func:`torch.load` (default ``"cpu"``).

    Returns:
        The loaded mapping (a Lightning checkpoint dict or a ``state_dict``).

    Raises:
        CheckpointError: the file is missing or a directory; it is not a torch file or is truncated;
            it carries a pickle payload that ``weights_only=True`` refuses (nothing in it is run);
            or it does not hold a mapping. The message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    try:
        with warnings.catch_warnings():
            # a raw (non-torch) pickle triggers a protocol warning before being refused or loaded
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unsafe_reason(err)
        if reason is not None:
            raise CheckpointError(
                f"refusing to load {p}: {reason}, which torch.load(weights_only=True) does not allow "
                "(a pickle payload can run code); only tensors, numbers, strings and containers are accepted"
            ) from None
        detail = " ".join(str(err).split())
        if "WeightsUnpickler error:" in detail:  # drop torch's generic advice around the cause
            detail = detail.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        detail = _brief(detail)
        raise CheckpointError(f"not a valid checkpoint (corrupt or not written by torch.save): {p} ({detail})") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types on corrupt input (IndexError, EOFError, ...)
        detail = _brief(" ".join(str(err).split()))
        raise CheckpointError(f"not a valid checkpoint (corrupt, truncated or not a torch file): {p} ({detail})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a checkpoint: {p} holds a {type(obj).__name__}, expected a dict/state_dict")
    return obj  # type: ignore[return-value]


def init_kwargs(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments among a checkpoint's saved hyper-parameters.

    Checkpoints written under LightningCLI store bookkeeping keys (``_class_path``,
    ``_instantiator``) next to the arguments of ``hyper_parameters`` and
    ``datamodule_hyper_parameters``; they are dropped here so that ``Cls(**init_kwargs(h))``
    works for checkpoints from ``tx-suite fit`` and from plain ``Trainer.fit`` alike.
    """
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    Through :func:`tx_suite.utils.atomic_write.atomic_open`: a temporary file next to ``path``,
    fsynced and renamed over it, then the directory fsynced. If anything fails (including a
    serialization error mid-write) the temporary file is removed and ``path`` keeps its previous
    content. A process killed mid-write leaves at most a stray ``.tmp`` file, never a corrupt ``path``.
    """
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
