"""The ``--device`` option of the inference commands (translate, classify, generate)."""

from __future__ import annotations

import torch


def check_device(name: str) -> str | None:
    """Why ``name`` cannot be used as a torch device here, or None if it can."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name} but torch.cuda.is_available() is False here; use --device cpu"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"--device {name} but this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name} but MPS is not available here; use --device cpu"
    return None
