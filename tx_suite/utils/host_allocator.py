"""Keep freed host memory in the process, so a CPU training step reuses pages instead of faulting them in.

glibc's malloc returns freed memory to the kernel: anything above its mmap threshold (which starts at
128 KiB and adapts up to 32 MiB) is unmapped at ``free``, and the top of the heap is trimmed once
more than twice that threshold is free. A training step allocates and frees hundreds of MB of
activations and gradients, so every step the kernel zero-filled fresh pages for them again (tens
of thousands of minor page faults per step of the tiny en->de model). With the mmap threshold
fixed at its 32 MiB maximum and trimming off, those allocations come from the heap and its pages are
reused; larger ones are still mapped and unmapped, so a one-off giant buffer is still returned. The
cost: the process keeps its peak heap until it exits. Measured in ``benchmarks/host_allocator.py``
(RESULTS.md).

``TX_SUITE_MALLOC=default`` (or ``0``) leaves glibc's settings alone. Other C libraries (macOS,
Windows, musl) are left alone too; so are settings made with glibc's own ``MALLOC_MMAP_MAX_`` /
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables or
``GLIBC_TUNABLES=glibc.malloc.*``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "TX_SUITE_MALLOC"

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): the dynamic threshold's cap.
MMAP_THRESHOLD = 32 * 1024 * 1024

_OFF = ("0", "default", "off", "false", "no")
_ON = ("", "1", "keep", "on", "true", "yes")
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations up to 32 MiB from the heap and never shrink it (``mallopt(3)``:
    ``M_MMAP_THRESHOLD = 32 MiB``, ``M_TRIM_THRESHOLD = -1``). Idempotent; call it before training.

    Returns:
        Whether the settings are in effect: False off Linux/glibc, when ``TX_SUITE_MALLOC`` is
        ``default``/``0``, when the user configured glibc's malloc through its own environment
        variables, or when ``mallopt`` refused.

    Raises:
        ValueError: ``TX_SUITE_MALLOC`` is neither ``default``/``0`` nor ``keep``/``1`` (a typo
            would otherwise pick one silently).
    """
    global _applied
    if _applied:
        return True
    value = os.environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 'default' (glibc's own malloc settings) or 'keep'")
    if any(name in os.environ for name in _GLIBC_ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user's own malloc settings win
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 disables trimming altogether (mallopt(3)); mallopt returns 1 on success.
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process (for run records)."""
    return _applied


__all__ = ["ENV", "freed_memory_kept", "keep_freed_memory"]
