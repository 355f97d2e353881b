"""Pin the kernel behind ``F.scaled_dot_product_attention`` for a task's steps.

PyTorch picks the SDPA kernel itself; on CPU under bf16 autocast its default (flash) kernel has a
slow backward at short sequence lengths, and the math kernel trains faster (measured in
``benchmarks/RESULTS.md``: ViT-MNIST, translation). Tasks take an ``sdpa_backend`` name and run
their forward passes inside :func:`sdpa_backend_context`.
"""

from __future__ import annotations

import contextlib

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


def check_sdpa_backend(name: str | None) -> None:
    """Validate an ``sdpa_backend`` setting (``None`` = PyTorch's choice).

    Raises:
        ValueError: ``name`` is not one of :data:`SDPA_BACKENDS` (case-insensitive).
    """
    if name is not None and name.lower() not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend must be one of {sorted(SDPA_BACKENDS)} or null, got {name!r}")


def sdpa_backend_context(name: str | None) -> contextlib.AbstractContextManager:
    """Context manager restricting SDPA to the kernel ``name``; a no-op for ``None``."""
    if name is None:
        return contextlib.nullcontext()
    check_sdpa_backend(name)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name.lower()])])
