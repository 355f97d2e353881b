"""Write a file whole or not at all: the one temp-file-then-rename helper every writer here uses.

Checkpoints, ``run_info.json``, the BPE cache, extracted MNIST files and downloaded Multi30k
archives are all read back later by another process, often after a crash or a kill. Each is
written to a temporary file in the target's directory (so the rename stays on one filesystem and
is atomic, POSIX ``rename(2)``), flushed and fsynced, renamed over the target, and the directory is
fsynced so that the rename itself survives a power loss. On any failure (full disk, a serialization
error, ``KeyboardInterrupt``) the temporary file is removed and the target keeps its old content.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    """Open a new ``.<name>.<random>.tmp`` in ``directory`` with mode ``0666 & ~umask``, as
    ``open()`` would create it (``mkstemp`` makes it 0600, and reading the umask means setting
    it, process-wide, which races with other threads creating files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename into it is durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it is replaced whole when the ``with`` block ends, or not at all.

    The block writes to ``.<name>.<random>.tmp`` next to ``path``, created with the mode ``open()``
    would give it (``0666 & ~umask``); on a normal exit the file is flushed, fsynced and
    ``os.replace``-d over ``path``, then the directory is fsynced. If the block (or the fsync or the
    rename) raises, the temporary file is removed and the exception propagates: ``path`` keeps its
    previous content. A process killed mid-write leaves at most a stray ``.tmp`` file.

    A symlink is followed (the file it points to is replaced, the link stays), and an existing
    target that is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is written in
    place: replacing it would swap the device for a regular file.

    Args:
        path: the target; its parent directories are created.
        mode: ``"wb"`` or ``"w"`` (text, then pass ``encoding``).

    Raises:
        ValueError: ``mode`` is not a write mode.
        OSError: the write, fsync or rename failed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    # Before resolving: /dev/stdout on a pipe resolves to a /proc/<pid>/fd/pipe:[N] name that does
    # not exist, while stat() of the unresolved path follows the link to the pipe itself.
    if _is_special(Path(path)):
        with open(path, mode, encoding=encoding) as f:
            yield f
        return
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def _is_special(path: Path) -> bool:
    """An existing target that is not a regular file (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now if :func:`atomic_open` could not write ``path`` later: for commands that compute for
    minutes first.

    Creates the missing parent directories. An existing ``path`` is opened for appending (which
    refuses a directory and a read-only file, where ``touch`` would succeed); unless it is a device
    or FIFO (written in place), its directory is also probed with a temporary file, since the new
    content is renamed over it from there. A new file leaves nothing behind, so a run that fails
    later leaves no empty file.

    Raises:
        OSError: ``path`` or its directory cannot be written (its ``strerror`` says why).
    """
    if _is_special(Path(path)):  # before resolving, as atomic_open
        open(path, "ab").close()
        return
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        open(path, "ab").close()
    tempfile.TemporaryFile(dir=path.parent).close()
