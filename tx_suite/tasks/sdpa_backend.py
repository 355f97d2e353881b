"""Pin the kernel behind ``F.scaled_dot_product_attention`` for a task's steps.

PyTorch picks the SDPA kernel itself; on CPU under bf16 autocast its default (flash) kernel has a
slow backward at short sequence lengths, and the math kernel trains faster (measured in
``benchmarks/RESULTS.md``: ViT-MNIST, translation). Tasks take an ``sdpa_backend`` name and run
their forward passes inside :func:`sdpa_backend_context`.

The setting is a choice of the training machine, and it travels in checkpoints: a model trained on
a GPU with ``"efficient"`` or ``"cudnn"`` (kernels CPUs lack) is evaluated on a CPU with PyTorch's
own choice there, with one warning, instead of failing with "No available kernel".
"""

from __future__ import annotations

import contextlib
import warnings

import torch

#: accepted names (lower case) -> ``torch.nn.attention.SDPBackend`` member
SDPA_BACKENDS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "flash_attention": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "efficient_attention": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "cudnn_attention": "CUDNN_ATTENTION",
}

#: kernels that exist only on CUDA devices
_CUDA_ONLY = {"EFFICIENT_ATTENTION", "CUDNN_ATTENTION"}
_warned: set[tuple[str, str]] = set()


def check_sdpa_backend(name: str | None) -> None:
    """Validate an ``sdpa_backend`` setting (``None`` = PyTorch's choice).

    Raises:
        ValueError: ``name`` is not one of :data:`SDPA_BACKENDS` (case-insensitive).
    """
    if name is not None and name.lower() not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend must be one of {sorted(SDPA_BACKENDS)} or null, got {name!r}")


def sdpa_backend_context(name: str | None, device: torch.device | str | None = None
                         ) -> contextlib.AbstractContextManager:
    """Context manager restricting SDPA to the kernel ``name``; a no-op for ``None``.

    Args:
        name: one of :data:`SDPA_BACKENDS` or ``None``.
        device: where the attention runs. On a non-CUDA device a CUDA-only kernel (``"efficient"``,
            ``"cudnn"``) is not pinned: PyTorch chooses, and a warning says so once per name and
            device type. ``"flash"`` off CUDA keeps the math kernel as a fallback: the CPU flash
            kernel has no attention dropout, and a training step with ``attn_dropout > 0`` would
            fail with "No available kernel" (its evaluation, without dropout, passes). ``None``
            pins as asked.

    Raises:
        ValueError: ``name`` is unknown.
    """
    if name is None:
        return contextlib.nullcontext()
    check_sdpa_backend(name)
    member = SDPA_BACKENDS[name.lower()]
    device_type = torch.device(device).type if device is not None else None
    if device_type is not None and device_type != "cuda" and member in _CUDA_ONLY:
        if (name, device_type) not in _warned:
            _warned.add((name, device_type))
            warnings.warn(f"sdpa_backend={name!r} has no {device_type} kernel; letting PyTorch choose "
                          f"the attention kernel on {device_type}", stacklevel=2)
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [getattr(SDPBackend, member)]
    if member == "FLASH_ATTENTION" and device_type is not None and device_type != "cuda":
        kernels.append(SDPBackend.MATH)  # taken only where flash cannot run (dropout on CPU)
    return sdpa_kernel(kernels)
