"""`_base_` config inheritance, argv expansion and --print_config."""

from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from tx_suite.cli.main import main
from tx_suite.utils.config import (ConfigError, deep_merge, default_experiment_name, expand_config_argv,
                                   integer_batch_limits, load_config)

TESTS = Path(__file__).resolve().parent
TINY = str(TESTS / "configs" / "tiny_mnist.yaml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_deep_merge_rules():
    base = {"a": {"x": 1, "y": [1, 2]}, "m": {"class_path": "A", "init_args": {"p": 1, "q": 2}}, "keep": 0}
    over = {"a": {"y": [3]}, "m": {"class_path": "A", "init_args": {"q": 5}}}
    out = deep_merge(base, over)
    assert out == {"a": {"x": 1, "y": [3]}, "m": {"class_path": "A", "init_args": {"p": 1, "q": 5}}, "keep": 0}
    # a different class_path replaces the whole subtree: A's init_args mean nothing to B
    out = deep_merge(base, {"m": {"class_path": "B", "init_args": {"r": 1}}})
    assert out["m"] == {"class_path": "B", "init_args": {"r": 1}}
    # an override without class_path only updates init_args
    assert deep_merge(base, {"m": {"init_args": {"p": 9}}})["m"] == {"class_path": "A", "init_args": {"p": 9, "q": 2}}
    assert base["a"]["y"] == [1, 2] and base["m"]["init_args"]["q"] == 2  # inputs untouched


def test_merge_edits_an_inherited_callbacks_list(tmp_path):
    write(tmp_path / "base.yaml", """
        trainer:
          callbacks:
            - {class_path: pkg.Bar, init_args: {refresh_rate: 20}}
            - {class_path: pkg.Maps, init_args: {n: 2, every: 1}}
            - {class_path: pkg.Avg, init_args: {last_n: 5}}
    """)
    exp = write(tmp_path / "exp.yaml", """
        _base_: base.yaml
        trainer:
          callbacks:
            _merge_:
              - {class_path: pkg.Maps, init_args: {every: 10}}
              - {class_path: pkg.Bar, _remove_: true}
              - {class_path: pkg.New}
    """)
    assert load_config(exp)["trainer"]["callbacks"] == [
        {"class_path": "pkg.Maps", "init_args": {"n": 2, "every": 10}},  # one argument changed, order kept
        {"class_path": "pkg.Avg", "init_args": {"last_n": 5}},
        {"class_path": "pkg.New"},  # appended
    ]
    # Through the command line too: the expanded file jsonargparse reads has no _merge_ left.
    out = expand_config_argv(["fit", "--config", str(exp)])
    assert "_merge_" not in Path(out[2]).read_text()


@pytest.mark.parametrize("edit, message", [
    ("- {class_path: pkg.Gone, _remove_: true}", "cannot remove pkg.Gone"),
    ("- {init_args: {n: 1}}", "needs a class_path"),
    ("- {class_path: pkg.Twice}", "2 inherited entries have class_path pkg.Twice"),
])
def test_merge_errors_name_the_file(tmp_path, edit, message):
    write(tmp_path / "base.yaml", "trainer: {callbacks: [{class_path: pkg.Twice}, {class_path: pkg.Twice}]}\n")
    exp = write(tmp_path / "exp.yaml", f"_base_: base.yaml\ntrainer:\n  callbacks:\n    _merge_:\n      {edit}\n")
    with pytest.raises(ConfigError, match=f"exp.yaml: _merge_.*{message}"):
        load_config(exp)
    scalar = write(tmp_path / "scalar.yaml", "_base_: base.yaml\ntrainer: {_merge_: [{class_path: a.B}]}\n")
    with pytest.raises(ConfigError, match="inherited value is dict"):
        load_config(scalar)


def test_bases_recursive_relative_and_later_wins(tmp_path):
    write(tmp_path / "base" / "root.yaml", """
        trainer: {max_epochs: 10, log_every_n_steps: 50}
        model: {class_path: pkg.Model, init_args: {d_model: 256, n_heads: 8}}
        tags: [root]
    """)
    write(tmp_path / "base" / "other.yaml", """
        trainer: {log_every_n_steps: 5}
    """)
    write(tmp_path / "task" / "base.yaml", """
        _base_: ../base/root.yaml
        model: {init_args: {n_heads: 4}}
    """)
    exp = write(tmp_path / "task" / "exp.yaml", """
        _base_: [base.yaml, ../base/other.yaml]
        trainer: {max_epochs: 3}
        tags: [exp]
    """)
    cfg = load_config(exp)
    assert cfg == {
        "trainer": {"max_epochs": 3, "log_every_n_steps": 5},  # own key wins; later base wins
        "model": {"class_path": "pkg.Model", "init_args": {"d_model": 256, "n_heads": 4}},  # nested merge
        "tags": ["exp"],  # lists replaced
    }


def test_scientific_notation_stays_a_float(tmp_path):
    # PyYAML's safe_load reads `1e-3` as a string; jsonargparse (and we) read a float.
    write(tmp_path / "base.yaml", "model: {init_args: {lr: 1.0}}\n")
    exp = write(tmp_path / "exp.yaml", "_base_: base.yaml\nmodel: {init_args: {lr: 3e-4, name: '1e-3'}}\n")
    assert load_config(exp)["model"]["init_args"] == {"lr": 3e-4, "name": "1e-3"}


def test_base_errors_name_the_file(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cyclic _base_"):
        load_config(tmp_path / "a.yaml")
    bad = write(tmp_path / "c.yaml", "_base_: [missing.yaml]\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(bad)
    broken = write(tmp_path / "d.yaml", "trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML in .*d.yaml"):
        load_config(broken)


def test_expand_config_argv_keeps_order_and_plain_files(tmp_path):
    plain = write(tmp_path / "plain.yaml", "trainer: {max_epochs: 1}\n")
    child = write(tmp_path / "child.yaml", "_base_: plain.yaml\ntrainer: {max_epochs: 2}\n")
    argv = ["fit", "--config", str(plain), f"--config={child}", "--trainer.max_epochs=5"]
    out = expand_config_argv(argv)
    assert out[:3] == ["fit", "--config", str(plain)]  # no _base_: passed through
    assert out[3].startswith("--config=") and out[3] != argv[3]
    expanded = Path(out[3].split("=", 1)[1])
    assert expanded.name == "child.yaml"
    assert yaml.safe_load(expanded.read_text()) == {"trainer": {"max_epochs": 2}}
    assert out[4] == "--trainer.max_epochs=5"


def test_print_config_shows_merged_values(capsys, runs_dir):
    code = main(["fit", "--config", TINY, "--trainer.max_epochs=7", "--print_config"])
    assert code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_epochs"] == 7  # command line over the file
    assert cfg["trainer"]["log_every_n_steps"] == 2  # the file over its base
    assert cfg["checkpoint"]["monitor"] == "val/acc" and cfg["checkpoint"]["save_last"] is True
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]  # from experiments/base/trainer.yaml
    assert callbacks == ["pytorch_lightning.callbacks.TQDMProgressBar", "pytorch_lightning.callbacks.LearningRateMonitor"]
    assert cfg["experiment"] == "tiny_mnist" and cfg["seed_everything"] == 1234
    assert "_base_" not in cfg
    assert not runs_dir.exists()  # printing the config starts no run


def test_a_config_without_a_seed_gets_the_documented_default(capsys, runs_dir, tmp_path):
    # docs/cli.md: seed_everything defaults to 1234 also where no base config sets it
    bare = write(tmp_path / "bare.yaml", "model:\n  class_path: cli_fixtures.TinyMNISTClassifier\n"
                 "data:\n  class_path: cli_fixtures.TinyMNISTDataModule\n")
    assert main(["fit", "--config", str(bare), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed_everything"] == 1234


def test_trainer_only_diffs_do_not_rename_the_experiment(capsys, runs_dir, tmp_path):
    scale = TESTS.parent / "experiments" / "scale"
    assert default_experiment_name([TINY, str(scale / "ddp.yaml"), str(scale / "bf16.yaml")]) == "tiny_mnist"
    mine = write(tmp_path / "my_lr.yaml", "model:\n  init_args:\n    lr: 0.01\n")
    assert default_experiment_name([TINY, str(mine), str(scale / "bf16.yaml")]) == "my_lr"
    assert default_experiment_name([str(scale / "bf16.yaml")]) == "bf16" and default_experiment_name([]) == "default"
    # a trainer-only diff over a trainer-only base is still trainer-only (it read the raw file)
    cpu = write(tmp_path / "ddp_cpu.yaml", f"_base_: [{scale / 'ddp.yaml'}]\ntrainer: {{accelerator: cpu, devices: 2}}\n")
    assert default_experiment_name([TINY, str(cpu)]) == "tiny_mnist"
    code = main(["fit", "--config", TINY, "--config", str(scale / "bf16.yaml"), "--print_config"])
    assert code == 0 and yaml.safe_load(capsys.readouterr().out)["experiment"] == "tiny_mnist"


def test_deterministic_switch_and_seed_are_configurable(capsys, runs_dir):
    assert main(["fit", "--config", TINY, "--deterministic", "--seed_everything=7", "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["deterministic"] is True and cfg["seed_everything"] == 7


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_help_describes_what_tx_suite_does_with_ckpt_path(subcommand, capsys):
    assert main([subcommand, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal width
    assert "--deterministic is short for --trainer.deterministic=true" in out and "_base_" in out
    assert "newest run of --experiment" in out
    assert "Lightning Model Registry" not in out  # Lightning's own meaning of --ckpt_path, not ours


def test_integer_batch_limits_mean_batches_not_fractions(runs_dir, tmp_path, capsys):
    """Lightning reads ``limit_val_batches=1`` as one batch and ``1.0`` as all of them; jsonargparse
    parses both as 1.0 (Trainer's type is ``float | int``). Integers written in a config file or on
    the command line must reach the Trainer, and the saved config, as integers."""
    mine = write(tmp_path / "limits.yaml", "trainer:\n  limit_train_batches: 2\n  limit_test_batches: 1\n")
    argv = ["--config", TINY, "--config", str(mine), "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches", "1.0"]
    assert integer_batch_limits(argv) == {"limit_train_batches": 2, "limit_val_batches": 1}
    # A whole trainer section, inline or as a file, counts too; later settings still win.
    section = write(tmp_path / "trainer.yaml", "limit_predict_batches: 3\nmax_epochs: 2\n")
    assert integer_batch_limits(["--trainer={limit_val_batches: 1, limit_test_batches: 2.0}",
                                 "--trainer", str(section), "--trainer.limit_val_batches=0.5"]) \
        == {"limit_predict_batches": 3}
    assert integer_batch_limits(['--trainer={"limit_val_batches": 1}']) == {"limit_val_batches": 1}
    assert main(["fit", *argv, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert (printed["limit_train_batches"], printed["limit_val_batches"], printed["limit_test_batches"]) == (2, 1, 1.0)
    assert main(["fit", *argv, "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
                 "--run_id", "r"]) == 0
    run = runs_dir / "tiny_mnist" / "r"
    saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert (saved["limit_train_batches"], saved["limit_val_batches"], saved["limit_test_batches"]) == (2, 1, 1.0)
    assert type(saved["limit_val_batches"]) is int and type(saved["limit_test_batches"]) is float
    with (run / "metrics.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert max(steps) == 3  # 2 epochs x 2 batches (8 a epoch without the limit)


def test_merge_under_a_section_the_bases_lack_and_without_bases(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  init_args: {lr: 0.1}\n")  # no trainer section
    exp = write(tmp_path / "exp.yaml", "_base_: base.yaml\ntrainer:\n  callbacks:\n    _merge_:\n"
                                       "      - class_path: a.B\n")
    assert load_config(exp)["trainer"]["callbacks"] == [{"class_path": "a.B"}]  # was left as {_merge_: ...}
    # no _base_: an edit would silently replace an earlier --config's list, so it is refused
    alone = write(tmp_path / "alone.yaml", "trainer:\n  callbacks:\n    _merge_:\n      - class_path: a.B\n")
    with pytest.raises(ConfigError, match="alone.yaml: _merge_ edits a list inherited through _base_"):
        load_config(alone)


def test_non_utf8_config_is_named(tmp_path, capsys, runs_dir):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("trainer:\n  max_epochs: 1\n# caf\xe9\n".encode("latin-1"))
    assert main(["fit", "--config", TINY, "--config", str(bad), "--print_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad} is not UTF-8 text" in err


def test_duplicate_keys_are_refused_but_merge_keys_may_override(tmp_path, capsys, runs_dir):
    # PyYAML and jsonargparse keep the last of two equal keys silently; a plain file (no _base_)
    # goes to jsonargparse as it is, so the check must not depend on inheritance.
    dup = write(tmp_path / "dup.yaml", "trainer:\n  max_epochs: 3\n  min_epochs: 1\n  max_epochs: 1\n")
    assert main(["fit", "--config", TINY, "--config", str(dup), "--print_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "duplicate key 'max_epochs' (first on line 2), again on line 4" in err
    with pytest.raises(ConfigError, match="duplicate key 'lr' \\(first on line 1\\), again on line 1"):
        load_config(write(tmp_path / "flow.yaml", "model: {init_args: {lr: 1, lr: 2}}\n"))
    anchors = write(tmp_path / "anchors.yaml", "a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n")
    assert load_config(anchors)["b"] == {"p": 3, "q": 2}
    # a file given to one option is read by jsonargparse itself, not through --config
    trainer = write(tmp_path / "trainer.yaml", "max_epochs: 3\nmax_epochs: 1\n")
    for argv in (["--trainer", str(trainer)], [f"--trainer={trainer}"]):
        assert main(["fit", "--config", TINY, *argv, "--print_config"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "duplicate key 'max_epochs' (first on line 1), again on line 2" in err
    fine = write(tmp_path / "trainer_ok.yaml", "max_epochs: 3\n")
    assert main(["fit", "--config", TINY, "--trainer", str(fine), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 3


def test_seed_everything_true_picks_a_random_seed(capsys, runs_dir, monkeypatch):
    """Each run in one process too: seed_everything's PL_GLOBAL_SEED is set for its command only
    (else the next `true` would inherit it, as DDP ranks do)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    seeds = set()
    for _ in range(2):
        assert main(["fit", "--config", TINY, "--seed_everything=true", "--trainer.fast_dev_run=true",
                     "--trainer.enable_progress_bar=false", "--trainer.logger=false"]) == 0
        assert "PL_GLOBAL_SEED" not in os.environ
    for info in runs_dir.glob("*/*/run_info.json"):
        seeds.add(yaml.safe_load(info.read_text())["seed"])
    assert len(seeds) == 2 and 0 not in seeds  # Lightning 2.6 seeds 0 for `true`


def test_seed_everything_true_is_shared_by_ranks_that_torchrun_or_slurm_started(capsys, runs_dir, monkeypatch):
    """Processes started together by torchrun/SLURM must agree on the seed (it seeds the samplers):
    they derive it from their shared --run_id; without one the command stops with a one-line error."""
    from tx_suite.cli.lightning_cli import random_seed

    for var in ("PL_GLOBAL_SEED", "WORLD_SIZE", "SLURM_NTASKS", "JSM_NAMESPACE_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert random_seed("a") != random_seed("a")  # one process: drawn afresh (equal with p = 2**-32)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # one process in an allocation, as Lightning sees it
    assert random_seed(None) != random_seed(None)
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert random_seed("a") == random_seed("a") != random_seed("b")
    assert 0 <= random_seed("a") < 2**32
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # a rank Lightning's launcher started: rank 0's seed
    assert random_seed(None) == 7
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert main(["fit", "--config", TINY, "--seed_everything=true", "--trainer.fast_dev_run=true",
                 "--trainer.logger=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the same --run_id on every rank" in err[0], err
    assert not list(runs_dir.glob("*/*"))  # stopped before any run directory


def test_expanded_configs_with_the_same_file_name_stay_apart(tmp_path):
    """Two `--config` files named alike in different directories, both with `_base_`: each expanded
    file keeps its own merge (one must not overwrite the other)."""
    write(tmp_path / "base.yaml", "trainer: {max_epochs: 1, log_every_n_steps: 3}\n")
    a = write(tmp_path / "a" / "exp.yaml", "_base_: ../base.yaml\ntrainer: {max_epochs: 2}\n")
    b = write(tmp_path / "b" / "exp.yaml", "_base_: ../base.yaml\ntrainer: {max_epochs: 5}\n")
    out = expand_config_argv(["fit", "--config", str(a), "--config", str(b)])
    assert out[2] != out[4] and Path(out[2]).name == Path(out[4]).name == "exp.yaml"
    assert yaml.safe_load(Path(out[2]).read_text()) == {"trainer": {"max_epochs": 2, "log_every_n_steps": 3}}
    assert yaml.safe_load(Path(out[4]).read_text()) == {"trainer": {"max_epochs": 5, "log_every_n_steps": 3}}
