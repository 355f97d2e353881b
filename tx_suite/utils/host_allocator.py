"""Keep freed host memory in the process, so large CPU tensors reuse pages instead of faulting them in.

glibc's malloc serves a request above its mmap threshold (at most 32 MiB) with fresh pages from
``mmap`` and gives them back to the kernel at ``free``; the kernel zero-fills every page again on
first touch. A CPU training step allocates and frees tensors far larger than that each step: the
translation loss's ``(N, V)`` float32 logits are ~200 MB at 8192 tokens and a vocabulary of 8000,
and their log-probabilities and gradient as much again. Served from the heap and not trimmed, the
same pages are reused every step. On the 2-core reference machine this made a training step of the
tiny en->de model 1.7x faster (``benchmarks/host_allocator.py``, ``benchmarks/RESULTS.md``). The
cost: the process keeps its peak heap until it exits, instead of returning freed memory.

``TX_SUITE_MALLOC=default`` (or ``0``) leaves glibc's settings alone. Other C libraries (macOS,
Windows, musl) are left alone too; so are settings made with glibc's own ``MALLOC_MMAP_MAX_`` /
``MALLOC_TRIM_THRESHOLD_`` environment variables.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "TX_SUITE_MALLOC"

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_OFF = ("0", "default", "off", "false", "no")
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from the heap and never shrink it (``mallopt(3)``:
    ``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD = -1``). Idempotent; call it before training starts.

    Returns:
        Whether the settings are in effect: False off Linux/glibc, when ``TX_SUITE_MALLOC`` is
        ``default``/``0``, when the user configured glibc's malloc through its own environment
        variables, or when ``mallopt`` refused.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").strip().lower() in _OFF:
        return False
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
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process (for run records)."""
    return _applied


__all__ = ["ENV", "freed_memory_kept", "keep_freed_memory"]
