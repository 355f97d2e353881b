"""Bad input gives one clear line and a non-zero exit status, never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tx_suite.cli.main import main

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")


def run_error(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--trainer.max_epoch=3"], "unrecognized arguments: --trainer.max_epoch=3"),  # no prefix matching
        (["--model.init_args.hidden=abc"], "Parser key \"hidden\": Expected a <class 'int'>. Got value: abc"),
        (["--checkpoint.mode=maxx"], "`mode` can be min, max but got maxx"),
        (["--data.init_args.data_dir=/nonexistent"], "data file not found: /nonexistent/MNIST/raw/"),
        (["--model=no_such_module.Model"], "No module named 'no_such_module'"),
        (["--config", "no/such/file.yaml"], "config file not found: no/such/file.yaml"),
    ],
)
def test_config_errors_are_one_line(capsys, runs_dir, extra, expected):
    code, line = run_error(capsys, ["fit", "--config", TINY, "--trainer.max_epochs=1", *extra])
    assert code == 2
    assert line.startswith("tx-suite fit: error: ")
    assert expected in line
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.ckpt"))


def test_unknown_key_inside_config_file(capsys, runs_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(f"""
        _base_: [{TINY}]
        model:
          init_args:
            hiden: 3
    """))
    code, line = run_error(capsys, ["fit", "--config", str(bad)])
    assert code == 2 and "Option 'hiden' is not accepted" in line
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")  # with --print_config the root parser reports it
    code, line = run_error(capsys, ["fit", "--config", TINY, "--config", str(typo), "--print_config"])
    assert code == 2 and line.startswith("tx-suite fit: error:") and "max_epoch" in line
    assert line.endswith("(see `tx-suite fit --help`)")


def test_unknown_command(capsys):
    code, line = run_error(capsys, ["fitt"])
    assert code == 2 and "unknown command 'fitt'" in line


def test_debug_env_shows_the_original_exception(monkeypatch, runs_dir):
    monkeypatch.setenv("TX_SUITE_DEBUG", "1")
    with pytest.raises(Exception) as info:
        main(["fit", "--config", TINY, "--data.init_args.data_dir=/nonexistent"])
    chain = [info.value, info.value.__cause__]
    assert any(isinstance(e, FileNotFoundError) for e in chain)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_config_on_a_machine_without_one(capsys, runs_dir, monkeypatch, accelerator):
    """GPU configs (cifar10_vit.yaml) name the setting and the way out, before any run directory."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, line = run_error(capsys, ["fit", "--config", TINY, f"--trainer.accelerator={accelerator}"])
    assert code == 2
    assert line.startswith(f"tx-suite fit: error: trainer.accelerator={accelerator} but this machine has no such device")
    assert "--trainer.accelerator=cpu" in line
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_the_cpu_fix_for_ddp_yaml_names_devices_and_works(capsys, runs_dir, monkeypatch):
    """ddp.yaml sets devices: -1; the suggested `--trainer.accelerator=cpu` alone then failed with
    Lightning's "`devices` selected with `CPUAccelerator` should be an int > 0"."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    ddp = str(Path(__file__).resolve().parents[1] / "experiments" / "scale" / "ddp.yaml")
    code, line = run_error(capsys, ["fit", "--config", TINY, "--config", ddp])
    assert code == 2 and "add --trainer.accelerator=cpu --trainer.devices=N" in line, line
    # Lightning checks the pair when the Trainer is built (no fit here: an in-process DDP fit would
    # leave its process group and port to the later tests)
    import pytorch_lightning as pl

    with pytest.raises(Exception, match="should be an int > 0"):
        pl.Trainer(accelerator="cpu", devices=-1, strategy="ddp", logger=False)
    assert pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False).num_devices == 2


def test_missing_config_names_the_runs_own_config(capsys, runs_dir, tmp_path):
    run = tmp_path / "runs" / "exp" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 1\n")
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(b"")
    code, line = run_error(capsys, ["test", "--ckpt_path", str(ckpt)])
    assert code == 2 and "required: test.data, test.model" in line
    assert f"give the run's config: --config {run / 'config.yaml'}" in line
    code, line = run_error(capsys, ["fit"])
    assert code == 2 and "give an experiment config: --config experiments/" in line


def test_our_message_wins_over_the_low_level_cause(capsys, runs_dir, monkeypatch):
    """A download offline: the socket's gaierror is the root cause, but the line shown is the
    ConnectionError tx-suite raised from it ("... are you offline?"); before, only the gaierror."""
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    cifar = str(Path(__file__).resolve().parents[1] / "experiments" / "vision" / "cifar10_vit.yaml")
    code, line = run_error(capsys, ["fit", "--config", cifar, "--trainer.accelerator=cpu", "--trainer.fast_dev_run=true",
                                    "--data.init_args.download=true", "--data.init_args.data_dir=" + str(runs_dir)])
    assert code == 1
    assert "error (ConnectionError): cannot reach www.cs.toronto.edu" in line and "are you offline?" in line


def test_root_cause_prefers_errors_raised_by_tx_suite(tmp_path):
    from tx_suite.cli.main import root_cause
    from tx_suite.models.vit import read_timm_checkpoint

    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    try:
        try:
            read_timm_checkpoint(text)  # CheckpointError (a ValueError), raised while handling torch's error
        except ValueError as ours:
            raise RuntimeError("wrapper from a library") from ours
    except RuntimeError as outer:
        shown = root_cause(outer)
        assert isinstance(shown, ValueError) and str(shown).startswith("not a valid checkpoint") and str(text) in str(shown)
    try:
        try:
            raise KeyError("low level")  # raised here, in the tests: not tx-suite's
        except KeyError as low:
            raise RuntimeError("wrapper") from low
    except RuntimeError as outer:
        assert isinstance(root_cause(outer), KeyError)  # no message of ours: the original error


def test_empty_config_file_and_directory_are_named(capsys, runs_dir, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, line = run_error(capsys, ["fit", "--config", TINY, "--config", str(empty)])
    assert code == 2 and line == f"tx-suite fit: error: config file is empty: {empty}"  # was "Unexpected config"
    code, line = run_error(capsys, ["fit", "--config", str(tmp_path)])
    assert code == 2 and line == f"tx-suite fit: error: config path is a directory, not a YAML file: {tmp_path}"


def test_device_option_checks_the_cuda_index_against_the_device_count(monkeypatch):
    import torch

    from tx_suite.cli.devices import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cpu") is None and check_device("cuda") is None
    assert check_device("cuda:0") is None and check_device("cuda:1") is None
    assert check_device("cuda:2") == "--device cuda:2 but this machine has 2 CUDA device(s)"
    assert "is not a torch device" in check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch.cuda.is_available() is False" in check_device("cuda:0")
