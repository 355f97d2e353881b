"""Give a temporary file the mode ``open()`` would have given it, before it replaces the real one.

``tempfile.mkstemp`` creates files readable by the owner only (0600) on purpose; a checkpoint or
cache written that way and then renamed into place stays private, unlike every other file of the
run (``open()`` gives ``0666 & ~umask``, usually 0644).
"""

from __future__ import annotations

import os


def match_umask(fd: int) -> None:
    """``chmod`` the open file ``fd`` to ``0666 & ~umask`` (no-op where ``os.fchmod`` is missing)."""
    if not hasattr(os, "fchmod"):
        return
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
