"""atomic_open: the file is replaced whole or not at all, and no temporary file is left behind."""

import os
import stat
from pathlib import Path

import pytest

from tx_suite.utils.atomic_write import atomic_open


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("Grüße\n")
        assert not path.exists()  # readers never see a half-written file
    assert path.read_text(encoding="utf-8") == "Grüße\n"
    assert listing(path.parent) == ["out.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() makes it, not mkstemp's 0600


def test_the_umask_is_applied_by_the_kernel_not_read_by_setting_it(tmp_path, monkeypatch):
    """Reading the umask means os.umask(0) then restoring it: process-wide, so a file another thread
    created in between came out world-writable (0666). The temporary file is created with 0666 and
    the kernel applies the umask instead."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask called"))
        with atomic_open(tmp_path / "out.bin") as f:
            f.write(b"x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o640


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write(b"new, half written")
            raise KeyboardInterrupt  # BaseException too: Ctrl-C during a save loses nothing
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]


def test_a_failed_fsync_is_a_failed_write(tmp_path, monkeypatch):
    # the data must be on disk before the rename, or a power loss can leave an empty file at path
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    synced = []

    def failing_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        with atomic_open(path) as f:
            f.write(b"new")
    assert synced == [False]  # the file, before the rename (the directory's fsync comes after it)
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("mode", ["a", "r+", "ab", "x"])
def test_only_whole_file_write_modes_are_accepted(tmp_path, mode):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_open(tmp_path / "out", mode):
            pass
    assert listing(tmp_path) == []


def test_check_writable_probes_without_leaving_a_file(tmp_path):
    from tx_suite.utils.atomic_write import check_writable

    target = tmp_path / "new" / "dir" / "out.txt"
    check_writable(target)
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []  # parents made, no empty file
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    check_writable(kept)
    assert kept.read_text() == "old"
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)  # touch() would have accepted it
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        check_writable(tmp_path / "file" / "out.txt")  # a parent that is a file


def test_a_symlink_is_followed_and_a_device_is_written_in_place(tmp_path):
    """``translate -o out.txt`` through a symlink replaced the link by a regular file (the file it
    pointed to kept its old text); ``-o /dev/null`` as root would have replaced the device node."""
    import os
    import stat

    from tx_suite.utils.atomic_write import check_writable

    real = tmp_path / "real" / "t.txt"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    check_writable(link)
    with atomic_open(link, "w") as f:
        f.write("new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    null_link = tmp_path / "null"  # a link, so that a regression replaces the link, not /dev/null
    null_link.symlink_to("/dev/null")
    check_writable(null_link)
    with atomic_open(null_link, "w") as f:
        f.write("discarded\n")
    assert null_link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_dev_stdout_on_a_pipe_is_written_in_place(tmp_path):
    """`translate -o /dev/stdout | ...`: realpath of /dev/stdout on a pipe is /proc/<pid>/fd/pipe:[N],
    which does not exist, so the checks refused it and the temp file was made in /proc."""
    import subprocess
    import sys

    code = ("from tx_suite.utils.atomic_write import atomic_open, check_writable\n"
            "check_writable('/dev/stdout')\n"
            "with atomic_open('/dev/stdout', 'w') as f:\n"
            "    f.write('through the pipe\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout == "through the pipe\n", proc.stderr[-500:]
