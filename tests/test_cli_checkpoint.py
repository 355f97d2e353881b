"""Checkpoint safety: weights_only loading with clear errors, and crash-safe (atomic) saving."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tx_suite.cli.main import main
from tx_suite.tasks.callbacks import AtomicCheckpointIO
from tx_suite.utils.checkpoint import CheckpointError, atomic_save, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "configs" / "tiny_mnist.yaml")


class Payload:
    """Unpickling this calls ``open(marker, "w")``: stands for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_ckpt(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": Payload(marker)}}, path)
    return path, marker


def test_payload_is_real_when_unsafe_load_is_used(evil_ckpt):
    path, marker = evil_ckpt
    torch.load(path, weights_only=False)  # control: the payload does run without weights_only
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch_zip", "raw_pickle_protocol2", "raw_pickle_newest"])
def test_load_checkpoint_refuses_pickle_payload(tmp_path, kind):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    if kind == "torch_zip":
        torch.save({"w": torch.zeros(1), "x": Payload(marker)}, path)
    elif kind == "raw_pickle_protocol2":
        path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    else:
        path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not marker.exists()
    if kind != "raw_pickle_newest":  # newer protocols are already rejected as "not a valid checkpoint"
        assert message.startswith("refusing to load") and "weights_only=True" in message


def test_load_checkpoint_names_object_state_as_the_reason_it_refuses(tmp_path):
    # BUILD (set an object's state, how __setstate__ payloads work) on a plain dict: no global
    # is named, but it is still a pickled object, not a corrupt file
    path = tmp_path / "build.pt"
    path.write_bytes(b"\x80\x02}q\x00}q\x01X\x01\x00\x00\x00aq\x02K\x01sb.")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"refusing to load {path}: it holds pickled Python objects")


def test_load_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        load_checkpoint(junk)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:-600])
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        load_checkpoint(truncated)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tensor_only)
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], torch.arange(1000.0))


def test_cli_refuses_payload_checkpoint(capsys, runs_dir, evil_ckpt):
    path, marker = evil_ckpt
    code = main(["test", "--config", TINY, "--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert "Traceback" not in err
    assert any(line.startswith("tx-suite test: error: refusing to load") for line in err.splitlines())


def test_cli_names_what_is_wrong_with_a_checkpoint(capsys, runs_dir, tmp_path):
    """A plain state_dict, or a checkpoint of another task, is refused before any run directory is
    made (they used to fail with "error: 'pytorch-lightning_version'" or a datamodule error)."""
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    assert main(["test", "--config", TINY, "--ckpt_path", str(weights)]) == 2
    assert f"{weights} is not a Lightning checkpoint" in capsys.readouterr().err

    assert main(["fit", "--config", TINY, "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
                 "--run_id", "r"]) == 0
    ckpt = load_checkpoint(runs_dir / "tiny_mnist" / "r" / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"]["_class_path"] = "tx_suite.tasks.translation.TranslationTask"
    other = tmp_path / "translation.ckpt"
    torch.save(ckpt, other)
    capsys.readouterr()
    # (a command-line value: its "--ckpt_path: the command line's model.lr over the checkpoint's"
    # note came before the error, describing a load that never happened)
    assert main(["test", "--config", TINY, "--ckpt_path", str(other), "--model.init_args.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "holds a TranslationTask checkpoint, but the config's model is TinyMNISTClassifier" in err
    assert "--ckpt_path: the command line" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (runs_dir / "tiny_mnist").iterdir()) == ["r"]  # nothing left behind


def test_cli_takes_a_checkpoint_saved_outside_lightning_cli(capsys, runs_dir, tmp_path):
    """A task built in Python and trained with a plain pl.Trainer (benchmarks/translation_train.py)
    stores no _class_path; `test --ckpt_path` refused it with "Option 'vocab_size' is not accepted"."""
    assert main(["fit", "--config", TINY, "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
                 "--run_id", "r"]) == 0
    ckpt = load_checkpoint(runs_dir / "tiny_mnist" / "r" / "checkpoints" / "last.ckpt")
    for key in ("_class_path", "_instantiator"):
        ckpt["hyper_parameters"].pop(key, None)
    plain = tmp_path / "plain.ckpt"
    torch.save(ckpt, plain)
    capsys.readouterr()
    assert main(["test", "--config", TINY, "--ckpt_path", str(plain), "--trainer.enable_progress_bar=false"]) == 0
    # another task's checkpoint (arguments this class does not take): named as such, one line
    ckpt["hyper_parameters"]["vocab_size"] = 8000
    torch.save(ckpt, plain)
    capsys.readouterr()
    assert main(["test", "--config", TINY, "--ckpt_path", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "does not take (vocab_size): a checkpoint of another task?" in err and "Traceback" not in err


def test_print_config_with_ckpt_path_says_what_it_leaves_out(capsys, runs_dir, tmp_path):
    # It printed the config file's d_model while the run used the checkpoint's, without a word.
    assert main(["test", "--config", TINY, "--ckpt_path", str(tmp_path / "any.ckpt"), "--print_config"]) == 0
    out, err = capsys.readouterr()
    assert "model:" in out and "the checkpoint's model hyperparameters replace" in err


def test_atomic_checkpoint_io_roundtrip_and_refusal(tmp_path, evil_ckpt):
    io = AtomicCheckpointIO()
    ckpt = {"state_dict": {"w": torch.randn(4, 4)}, "epoch": 3}
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint(ckpt, target)
    loaded = io.load_checkpoint(target)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    # the mode open() would give (mkstemp's 0600 made checkpoints private to their writer)
    old_mask = os.umask(0o027)
    try:
        io.save_checkpoint(ckpt, target)
    finally:
        os.umask(old_mask)
    assert target.stat().st_mode & 0o777 == 0o640
    path, marker = evil_ckpt
    with pytest.raises(CheckpointError):
        io.load_checkpoint(path)  # Lightning's resume path goes through this plugin
    assert not marker.exists()


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from tx_suite.utils.checkpoint import atomic_save

    class Kill:
        # Pickled after the big tensor: the process dies in the middle of writing the checkpoint.
        def __reduce__(self):
            os._exit(9)

    path, mode = sys.argv[1], sys.argv[2]
    obj = {"state_dict": {"w": torch.ones(256, 1024)}, "kill": Kill()}
    if mode == "atomic":
        atomic_save(obj, path)
    else:
        with open(path, "wb") as f:
            f.write(b"PK" + b"\\0" * 4096)  # what an interrupted plain write leaves behind
            f.flush()
            torch.save(obj, path)
""")


@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_kill_during_save_keeps_previous_checkpoint(tmp_path, mode):
    path = tmp_path / "last.ckpt"
    previous = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 7}
    atomic_save(previous, path)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), mode],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    if mode == "atomic":
        survived = load_checkpoint(path)
        assert survived["global_step"] == 7 and torch.equal(survived["state_dict"]["w"], torch.arange(10.0))
    else:  # control: a non-atomic write destroys the previous checkpoint, so the test can tell
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_a_failed_atomic_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"global_step": 7}, path)
    with pytest.raises(Exception):
        atomic_save({"global_step": 8, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert load_checkpoint(path)["global_step"] == 7


def test_atomic_save_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    # without both fsyncs a power loss after the rename can leave an empty or missing checkpoint
    import stat

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "sub" / "a.ckpt"
    atomic_save({"global_step": 1}, path)
    assert (False, path.stat().st_ino) in synced, "the written file (renamed to path) is fsynced"
    assert (True, path.parent.stat().st_ino) in synced, "the directory holding the rename is fsynced"
