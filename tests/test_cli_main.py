"""The `tx-suite` entry point: fast help, sub-command table, `python -m tx_suite`, compare."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from tx_suite.cli import main as cli_main
from tx_suite.cli.compare import main as compare_main


def fake_command(argv):
    print("fake got", argv)
    return 3


def raising_command(argv):
    raise {"value": ValueError, "runtime": RuntimeError}[argv[0]]("bad\n  input")


def test_help_lists_every_command_without_importing_lightning(subprocess_env):
    code = (
        "import sys; from tx_suite.cli.main import main; rc = main(['--help']); "
        "assert 'pytorch_lightning' not in sys.modules and 'torch' not in sys.modules; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("fit", "validate", "test", "predict", "translate", "classify", "generate", "compare", "average"):
        assert f"\n  {name} " in proc.stdout


def test_version_names_the_packages(capsys):
    from importlib.metadata import version

    assert cli_main.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"tx-suite {version('tx-suite')} (torch {version('torch')}, pytorch-lightning ")


def test_python_dash_m_matches_the_console_script(subprocess_env):
    proc = subprocess.run([sys.executable, "-m", "tx_suite", "--help"], env=subprocess_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: tx-suite <command>")
    proc = subprocess.run([sys.executable, "-m", "tx_suite"], env=subprocess_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2  # no command is a usage error


def spam_command(argv):
    for i in range(100_000):  # far past a pipe's buffer: the write itself fails, not only the exit flush
        print("line", i)


def spam_over_a_socket_command(argv):
    import socket

    a, b = socket.socketpair()
    b.close()
    a.sendall(b"x" * 10_000_000)  # a BrokenPipeError that has nothing to do with stdout


@pytest.mark.parametrize("command", ["--help", "spam"])
def test_a_reader_that_goes_away_ends_the_command_quietly(subprocess_env, command):
    """`tx-suite compare | head`: exit 141 (as SIGPIPE would) with nothing on stderr, whether the
    write itself or the flush at exit finds the pipe closed."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run([sys.executable, "-c", _SPAM, command], env=subprocess_env, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=os.path.dirname(__file__))
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(subprocess_env):
    proc = subprocess.run([sys.executable, "-c", _SPAM, "sock"], env=subprocess_env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "error (BrokenPipeError)" in proc.stderr, proc.stderr


_SPAM = ("import sys; from tx_suite.cli import main as m; "
         "m.COMMANDS.update(spam='test_cli_main:spam_command', sock='test_cli_main:spam_over_a_socket_command'); "
         "sys.exit(m.main(sys.argv[1:]))")


def test_commands_table_dispatches_lazily(monkeypatch, capsys):
    monkeypatch.setitem(cli_main.COMMANDS, "fake", "test_cli_main:fake_command")
    assert cli_main.main(["fake", "--x", "1"]) == 3
    assert "fake got ['--x', '1']" in capsys.readouterr().out
    monkeypatch.setitem(cli_main.COMMANDS, "broken", "tx_suite.cli.no_such_module:main")
    assert cli_main.main(["broken"]) == 2
    assert "tx-suite broken: error: command not available" in capsys.readouterr().err


@pytest.mark.parametrize("debug", ["", "0", "false", "No", " no "])
def test_errors_are_one_line_with_an_exit_status_unless_debugging(monkeypatch, capsys, debug):
    monkeypatch.setitem(cli_main.COMMANDS, "raising", "test_cli_main:raising_command")
    monkeypatch.setenv("TX_SUITE_DEBUG", debug)
    assert cli_main.main(["raising", "value"]) == 2  # bad input: usage status, one line, no traceback
    assert capsys.readouterr().err == "tx-suite raising: error: bad input\n"
    assert cli_main.main(["raising", "runtime"]) == 1  # anything else: status 1 and how to see more
    assert capsys.readouterr().err.splitlines() == ["tx-suite raising: error (RuntimeError): bad input",
                                                    "tx-suite: set TX_SUITE_DEBUG=1 for the full traceback"]
    for on in ("1", "true", "yes"):
        monkeypatch.setenv("TX_SUITE_DEBUG", on)
        with pytest.raises(ValueError, match="bad"):
            cli_main.main(["raising", "value"])


def make_run(root, experiment, run_id, accs, monitor_mode="max"):
    run = root / experiment / run_id
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/acc"])
        for i, acc in enumerate(accs):
            w.writerow([i, 10 * (i + 1), "", acc])
            w.writerow([i, 10 * (i + 1), 1.0 / (i + 1), ""])
    (run / "config.yaml").write_text(yaml.safe_dump({"checkpoint": {"monitor": "val/acc", "mode": monitor_mode}}))
    (run / "run_info.json").write_text(json.dumps({"experiment": experiment, "subcommand": "fit", "status": "finished"}))
    return run


def test_compare_reports_last_and_best(tmp_path, capsys):
    make_run(tmp_path, "a", "r1", [0.5, 0.9, 0.8])
    make_run(tmp_path, "b", "r2", [0.2, 0.4])
    assert compare_main(["--runs_dir", str(tmp_path), "--json"]) == 0
    rows = {r["experiment"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert rows["a"]["last"]["val/acc"] == 0.8 and rows["a"]["best"] == 0.9 and rows["a"]["last_step"] == 30
    assert rows["b"]["best"] == 0.4 and rows["b"]["last"]["train/loss"] == pytest.approx(0.5)
    assert compare_main(["a", "--runs_dir", str(tmp_path), "--no_plot"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["r1"] and table[2].split() == ["last", "step", "30"]
    val_acc = table.index(next(line for line in table if line.startswith("val/acc")))
    assert table[val_acc].split() == ["val/acc", "final", "0.8"] and table[val_acc + 1].split() == ["best", "0.9", "@20"]
    with pytest.raises(FileNotFoundError):
        compare_main(["missing", "--runs_dir", str(tmp_path)])


def test_resume_command_replaces_ckpt_path(tmp_path):
    from tx_suite.cli.lightning_cli import resume_command

    ckpt = tmp_path / "runs" / "e" / "r" / "checkpoints" / "last.ckpt"
    cmd = ["tx-suite", "fit", "--config", "my exp.yaml", "--ckpt_path=old.ckpt", "--trainer.max_epochs=3"]
    assert resume_command(cmd, ckpt) == f"tx-suite fit --config 'my exp.yaml' --trainer.max_epochs=3 --ckpt_path {ckpt}"
    # The separate-argument form: the stale path after --ckpt_path goes too, not left as a stray argument.
    cmd = ["tx-suite", "fit", "--config", "c.yaml", "--ckpt_path", "old.ckpt", "--trainer.max_epochs=3"]
    assert resume_command(cmd, ckpt) == f"tx-suite fit --config c.yaml --trainer.max_epochs=3 --ckpt_path {ckpt}"
