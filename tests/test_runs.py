"""End-to-end runs of the CLI on the tiny MNIST task: run records, resume, test, non-finite loss."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from tx_suite.cli.main import main
from tx_suite.utils.checkpoint import load_checkpoint

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")
QUIET = ["--trainer.enable_progress_bar=false"]
STEPS_PER_EPOCH = 8  # 512 training digits / batch 64


def fit(*extra: str) -> int:
    return main(["fit", "--config", TINY, *QUIET, *extra])


def only_run(runs_dir: Path, experiment: str = "tiny_mnist") -> Path:
    runs = sorted((runs_dir / experiment).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def metric_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_fit_writes_a_complete_run_record(runs_dir):
    assert fit("--trainer.max_epochs=2", "--tags", "[extra]") == 0
    run = only_run(runs_dir)
    assert {"config.yaml", "run_info.json", "metrics.csv", "checkpoints"} <= {p.name for p in run.iterdir()}

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"] == "cli_fixtures.TinyMNISTClassifier"
    assert config["trainer"]["default_root_dir"] == str(run)
    assert config["checkpoint"]["dirpath"] == str(run / "checkpoints")
    assert config["weights_only"] is True

    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 1234 and info["experiment"] == "tiny_mnist" and info["run_id"] == run.name
    assert info["status"] == "finished" and info["command"][:2] == ["tx-suite", "fit"]
    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"] == torch.__version__
    assert {"python", "pytorch-lightning", "timm", "wandb", "jsonargparse"} <= set(info["versions"])
    assert set(info["git"]) == {"commit", "dirty", "branch"}

    rows = metric_rows(run)
    train_loss = column(rows, "train/loss")
    assert len(train_loss) >= 6 and train_loss[-1] < train_loss[0]  # it trained
    assert len(column(rows, "val/acc")) == 2  # one validation per epoch
    assert column(rows, "lr-Adam")  # the LearningRateMonitor from the base config

    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 * STEPS_PER_EPOCH
    assert float(best["callbacks"][next(k for k in best["callbacks"] if k.startswith("ModelCheckpoint"))]
                 ["best_model_score"]) == pytest.approx(max(column(rows, "val/acc")))
    assert not list((run / "checkpoints").glob("*.tmp"))  # atomic writes leave no temporaries

    # The saved config re-runs as is: a new run of the same experiment.
    assert main(["fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs=1"]) == 0
    assert len(list((runs_dir / "tiny_mnist").iterdir())) == 2


@pytest.mark.parametrize("steps", [[], ["--trainer.max_steps=1000"]], ids=["epochs", "max_steps"])
def test_resume_last_continues_the_same_run_exactly(runs_dir, recwarn, steps):
    assert fit("--trainer.max_epochs=1", *steps) == 0
    run = only_run(runs_dir)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    first_rows = metric_rows(run)

    recwarn.clear()
    assert fit("--trainer.max_epochs=2", *steps, "--ckpt_path", "last") == 0
    # With max_steps, Lightning replays the restored epoch end: no new save point, no warning
    # about the monitored metric missing, and the epoch is not counted twice (it would stop here).
    assert not [w for w in recwarn if "RunCheckpoint" in str(w.message)]
    assert only_run(runs_dir) == run  # resumed in place, no new run directory
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH and resumed["epoch"] == 1
    rows = metric_rows(run)
    assert rows[: len(first_rows)] == first_rows  # the record of epoch 0 is kept ...
    assert max(int(r["step"]) for r in rows) > STEPS_PER_EPOCH  # ... and continued
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and len(info["resumes"]) == 1
    assert info["resumes"][0]["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert info["resumes"][0]["wandb"]["id"] == info["wandb"]["id"] == run.name  # same W&B run id
    # config.yaml stays the first invocation's; the resume's settings go next to it
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    (resume_config,) = run.glob("config.resume-*.yaml")
    assert yaml.safe_load(resume_config.read_text())["trainer"]["max_epochs"] == 2

    # Same weights and epoch count as an uninterrupted 2-epoch run: optimizer state, loops and RNG
    # (shuffle, dropout) were all restored.
    assert fit("--trainer.max_epochs=2", *steps, "--experiment", "uninterrupted") == 0
    straight = load_checkpoint(only_run(runs_dir, "uninterrupted") / "checkpoints" / "last.ckpt")
    fit_progress = [c["loops"]["fit_loop"]["epoch_progress"]["total"] for c in (straight, resumed)]
    assert fit_progress[0] == fit_progress[1]
    logged = [[(r["step"], r["val/acc"]) for r in metric_rows(d) if r.get("val/acc")]
              for d in (only_run(runs_dir, "uninterrupted"), run)]
    assert logged[0] == logged[1]  # the same values at the same logger steps
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_test_subcommand_uses_best_of_newest_run(runs_dir, capsys, monkeypatch):
    assert fit("--trainer.max_epochs=1") == 0
    train_run = only_run(runs_dir)
    import functools

    import pytorch_lightning as pl

    real_test, seen = pl.Trainer.test, []

    @functools.wraps(real_test)  # LightningCLI reads the signature
    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return real_test(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "test", spy)
    assert main(["test", "--config", TINY, *QUIET, "--ckpt_path", "best"]) == 0
    assert [kw.get("weights_only") for kw in seen] == [True]  # Lightning loads the checkpoint weights-only too
    assert f"--ckpt_path best -> {train_run / 'checkpoints' / 'best.ckpt'}" in capsys.readouterr().err
    runs = sorted((runs_dir / "tiny_mnist").iterdir())
    test_run = next(r for r in runs if r != train_run)
    info = json.loads((test_run / "run_info.json").read_text())
    assert info["subcommand"] == "test" and info["ckpt_path"].endswith("best.ckpt")
    acc = column(metric_rows(test_run), "test/acc")
    assert len(acc) == 1 and acc[0] > 0.3  # the trained weights were loaded (chance is 0.1)
    assert main(["test", "--config", TINY, "--ckpt_path", "last", "--experiment", "never_trained"]) == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(runs_dir, capsys):
    nan_step = STEPS_PER_EPOCH + 3  # epoch 1, batch 3
    assert fit("--trainer.max_epochs=3", f"--model.init_args.nan_at_step={nan_step}") == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "non-finite" in line)
    assert f"global step {nan_step}" in line and "epoch 1, batch 3" in line and "last.ckpt" in line
    run = only_run(runs_dir)
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH  # the epoch-0 checkpoint, not the NaN state
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed"
    assert info["error"].startswith("NonFiniteLossError: ") and f"global step {nan_step}" in info["error"]


def test_logger_false_still_writes_run_dir(runs_dir):
    assert fit("--trainer.max_epochs=1", "--trainer.logger=false", "--run_id", "nolog") == 0
    run = runs_dir / "tiny_mnist" / "nolog"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "metrics.csv").exists() and not (run / "wandb").exists()
    assert fit("--trainer.max_epochs=1", "--run_id", "nolog") == 2  # never overwrite a run


def test_an_offline_fit_leaves_wandb_mode_as_it_found_it(runs_dir, monkeypatch, tmp_path):
    """With no key the CLI sets WANDB_MODE=offline for its run; a notebook's next fit, after
    `wandb login`, kept inheriting "offline" because the variable outlived the command."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
               "--trainer.logger=false") == 0
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a mode the user set is kept, not replaced
    assert fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
               "--trainer.logger=false") == 0
    assert os.environ["WANDB_MODE"] == "disabled"


def test_checkpoint_references_say_what_is_wrong(tmp_path):
    from tx_suite.utils.runs import resolve_checkpoint

    ckpt = tmp_path / "exp" / "r1" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert resolve_checkpoint("exp:best", tmp_path) == ckpt
    cases = {"exp:bestt": "EXPERIMENT:best or EXPERIMENT:last, not :bestt",
             str(ckpt.parent): "is a directory (give a .ckpt file in it",
             "exp:last": f"no {tmp_path / 'exp'}/*/checkpoints/last.ckpt (its runs have exp:best only)",
             "other:best": "train it first",
             str(tmp_path / "none.ckpt"): f"checkpoint not found: {tmp_path / 'none.ckpt'}"}
    for spec, message in cases.items():
        with pytest.raises(FileNotFoundError) as err:
            resolve_checkpoint(spec, tmp_path, kind="classifier")
        assert str(err.value).startswith("classifier checkpoint not found") and message in str(err.value), spec


def test_resuming_a_finished_run_says_there_is_nothing_to_train(runs_dir, capsys):
    assert fit("--trainer.max_epochs=1") == 0
    capsys.readouterr()
    assert fit("--trainer.max_epochs=1", "--ckpt_path", "last") == 0
    assert "nothing to train: the checkpoint is at step 8" in capsys.readouterr().err
    assert fit("--trainer.max_epochs=2", "--ckpt_path", "last") == 0
    assert "nothing to train" not in capsys.readouterr().err


def test_resuming_a_run_whose_max_time_is_used_up_says_so(runs_dir, capsys):
    """It said "already at trainer.max_epochs/max_steps; raise them", which cannot help: Lightning
    restores the Timer's elapsed time, so the resumed fit stops at once whatever max_epochs is."""
    assert fit("--trainer.max_epochs=1000", "--trainer.max_time=00:00:00:01") == 0
    capsys.readouterr()
    assert fit("--trainer.max_epochs=1000", "--trainer.max_time=00:00:00:01", "--ckpt_path", "last") == 0
    err = capsys.readouterr().err
    assert "trainer.max_time is used up" in err and "max_epochs/max_steps" not in err, err


def test_fast_dev_run_leaves_no_checkpoint_for_last_to_find(runs_dir, capsys):
    """Lightning documents that fast_dev_run saves no checkpoint, yet wrote last.ckpt at train end:
    the next `--ckpt_path last` resumed that 1-step smoke test instead of the real run."""
    assert fit("--trainer.max_epochs=1", "--run_id=real") == 0
    assert fit("--trainer.fast_dev_run=true", "--run_id=smoke") == 0
    assert not (runs_dir / "tiny_mnist" / "smoke" / "checkpoints").exists()
    assert fit("--trainer.max_epochs=2", "--ckpt_path", "last") == 0
    assert "real/checkpoints/last.ckpt" in capsys.readouterr().err


def test_ckpt_path_last_with_a_run_id_resumes_that_run(runs_dir, capsys):
    assert fit("--trainer.max_epochs=1") == 0  # an id of its own, which its config.yaml records
    (a,) = (runs_dir / "tiny_mnist").iterdir()
    assert fit("--trainer.max_epochs=1", "--run_id=b") == 0  # the newest
    config_a = a / "config.yaml"
    assert yaml.safe_load(config_a.read_text())["run_id"] == a.name
    assert main(["fit", "--config", str(config_a), *QUIET, "--trainer.max_epochs=2", "--ckpt_path", "last"]) == 0
    assert f"tiny_mnist/{a.name}/checkpoints/last.ckpt" in capsys.readouterr().err
    assert load_checkpoint(a / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert load_checkpoint(runs_dir / "tiny_mnist" / "b" / "checkpoints" / "last.ckpt")["epoch"] == 0
    # The same file without --ckpt_path re-runs the experiment as a new run (docs/cli.md).
    assert main(["fit", "--config", str(runs_dir / "tiny_mnist" / "b" / "config.yaml"), *QUIET,
                 "--trainer.max_epochs=1"]) == 0
    assert "run_id b (from a config file) is an existing run; this fit run gets a new id" in capsys.readouterr().err
    assert len(list((runs_dir / "tiny_mnist").iterdir())) == 3
    assert fit("--run_id=nope", "--ckpt_path", "last") == 2
    assert "with run_id nope: no " in capsys.readouterr().err
    # test with --run_id choosing the run's checkpoint: refused as "run directory already exists"
    assert main(["test", "--config", TINY, *QUIET, "--run_id=b", "--ckpt_path", "best"]) == 0
    err = capsys.readouterr().err
    assert "tiny_mnist/b/checkpoints/best.ckpt" in err and "run_id b (chose the checkpoint)" in err
    assert len(list((runs_dir / "tiny_mnist").iterdir())) == 4
    # EXPERIMENT:best, as translate/classify/generate take it: was "checkpoint not found"
    assert main(["validate", "--config", TINY, *QUIET, "--ckpt_path", "tiny_mnist:best"]) == 0
    assert "--ckpt_path tiny_mnist:best -> " in capsys.readouterr().err
    assert main(["validate", "--config", TINY, *QUIET, "--ckpt_path", "nope:best"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found: 'nope:best'" in err and len(err.strip().splitlines()) == 1, err


def test_runs_dir_with_a_tilde_is_one_directory(tmp_path, monkeypatch, capsys):
    """`--runs_dir=~/x` (the shell leaves that ~ alone): Lightning expanded it for checkpoints and
    metrics, tx-suite did not for run_info.json, and `--ckpt_path last` then found nothing."""
    monkeypatch.delenv("TX_SUITE_RUNS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert fit("--trainer.max_epochs=1", "--runs_dir=~/x", "--trainer.limit_val_batches=1") == 0
    (run,) = (tmp_path / "home" / "x" / "tiny_mnist").iterdir()
    assert {"run_info.json", "config.yaml", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert not (tmp_path / "~").exists()
    assert fit("--trainer.max_epochs=2", "--runs_dir=~/x", "--ckpt_path", "last") == 0


def test_test_with_a_runs_saved_config_makes_a_run_of_its_own(runs_dir, capsys):
    """A run's config.yaml names its run_id; `test --config <it>` hit 'run directory already exists'."""
    assert fit("--trainer.max_epochs=1", "--run_id=a") == 0
    config_a = runs_dir / "tiny_mnist" / "a" / "config.yaml"
    assert main(["test", "--config", str(config_a), *QUIET, "--ckpt_path", "best"]) == 0
    assert "tiny_mnist/a/checkpoints/best.ckpt" in capsys.readouterr().err
    assert len(list((runs_dir / "tiny_mnist").iterdir())) == 2
    # An explicit --run_id that chose the checkpoint (docs/cli.md) does the same, and says so.
    assert main(["test", "--config", str(config_a), *QUIET, "--ckpt_path", "best", "--run_id=a"]) == 0
    assert "run_id a (chose the checkpoint) is an existing run" in capsys.readouterr().err
    # With a checkpoint file the run_id names the new run: an existing one is still refused.
    best = runs_dir / "tiny_mnist" / "a" / "checkpoints" / "best.ckpt"
    assert main(["test", "--config", TINY, *QUIET, "--ckpt_path", str(best), "--run_id=a"]) == 2
    assert "run directory already exists" in capsys.readouterr().err


def test_fit_refuses_a_weights_only_checkpoint_before_touching_its_run(runs_dir, capsys):
    assert fit("--trainer.max_epochs=1", "--run_id=a") == 0
    run = runs_dir / "tiny_mnist" / "a"
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    del ckpt["optimizer_states"], ckpt["lr_schedulers"]  # what weights_only saving and averaging leave
    torch.save(ckpt, run / "checkpoints" / "averaged.ckpt")
    before = sorted(p.name for p in run.rglob("*"))
    capsys.readouterr()
    assert fit("--trainer.max_epochs=2", "--ckpt_path", str(run / "checkpoints" / "averaged.ckpt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds weights only" in err[0] and "fit cannot resume it" in err[0]
    assert sorted(p.name for p in run.rglob("*")) == before  # no config.resume-*, run_info untouched


def test_a_run_that_fails_before_logging_anything_leaves_no_directory(runs_dir, capsys, tmp_path):
    assert fit("--trainer.max_epochs=1", "--model.init_args.nan_at_step=0") == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "the run failed before it logged a metric or wrote a file" in err
    assert not (runs_dir / "tiny_mnist").exists() or not any((runs_dir / "tiny_mnist").iterdir())
    assert fit("--trainer.max_epochs=1", "--trainer.max_steps=3") == 0  # a finished run stays
    assert len(list((runs_dir / "tiny_mnist").iterdir())) == 1
    # A run that logged, but only to a logger that writes no file of its own here (W&B), is kept.
    wandb_only = tmp_path / "wandb_only.yaml"
    wandb_only.write_text("trainer:\n  logger:\n    - class_path: pytorch_lightning.loggers.WandbLogger\n"
                          "      init_args: {project: tx-suite-test}\n")
    assert fit("--config", str(wandb_only), "--experiment=tiny_mnist", "--trainer.max_epochs=1",
               "--model.init_args.nan_at_step=4", "--trainer.log_every_n_steps=1", "--run_id=wandb_only") == 1
    assert not (runs_dir / "tiny_mnist" / "wandb_only" / "metrics.csv").exists()
    assert "removed" not in capsys.readouterr().err and (runs_dir / "tiny_mnist" / "wandb_only").is_dir()


def test_a_failed_run_with_files_or_checkpoints_of_its_own_is_not_removed(tmp_path):
    """Only a run directory holding nothing but its setup files counts as empty: a failed run that
    logged no metric but wrote a file of its own (a callback's) or a checkpoint is kept."""
    from tx_suite.cli.lightning_cli import _holds_no_results

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "wandb").mkdir()
    for name in ("run_info.json", "config.yaml", "hparams.yaml"):
        (run / name).write_text("{}")
    assert _holds_no_results(run)
    (run / "samples.png").write_bytes(b"png")  # a callback's file
    assert not _holds_no_results(run)
    (run / "samples.png").unlink()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    assert not _holds_no_results(run)
    assert not _holds_no_results(tmp_path / "missing")


def test_a_system_exit_with_an_error_code_during_fit_is_an_interruption(runs_dir, monkeypatch):
    """Lightning ends a fit with SystemExit(1) after a graceful Ctrl-C: the run did not finish."""
    import cli_fixtures

    def stop(self, outputs, batch, batch_idx):
        if self.global_step == 3:
            raise SystemExit(1)

    monkeypatch.setattr(cli_fixtures.TinyMNISTClassifier, "on_train_batch_end", stop)
    assert fit("--trainer.max_epochs=1", "--run_id=stopped") == 1
    info = json.loads((runs_dir / "tiny_mnist" / "stopped" / "run_info.json").read_text())
    assert info["status"] == "interrupted"


def test_resuming_another_experiments_checkpoint_records_that_runs_experiment(runs_dir, capsys):
    """A run belongs to the experiment it started in, whatever --experiment the resume names."""
    assert fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
               "--run_id=a") == 0
    last = runs_dir / "tiny_mnist" / "a" / "checkpoints" / "last.ckpt"
    assert fit("--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
               "--experiment=other", "--ckpt_path", str(last)) == 0
    assert "experiment 'tiny_mnist' (not 'other')" in capsys.readouterr().err
    info = json.loads((runs_dir / "tiny_mnist" / "a" / "run_info.json").read_text())
    assert info["resumes"][-1]["experiment"] == "tiny_mnist"
    (resumed_config,) = (runs_dir / "tiny_mnist" / "a").glob("config.resume-*.yaml")
    assert yaml.safe_load(resumed_config.read_text())["experiment"] == "tiny_mnist"
    assert not (runs_dir / "other").exists()


def test_last_and_best_mean_the_run_whose_checkpoints_were_written_last(tmp_path):
    """`--ckpt_path last|best` and `EXPERIMENT:best`: the run with the newest checkpoint file (a resumed
    older run counts as new again), not the oldest run nor simply the highest run id."""
    from tx_suite.utils.runs import RunLookupError, find_checkpoint, resolve_checkpoint

    def ckpt(run: str, name: str, mtime: float) -> Path:
        path = tmp_path / "exp" / run / "checkpoints" / f"{name}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
        return path

    old_best, old_last = ckpt("20250101-000000-aaaa", "best", 100.0), ckpt("20250101-000000-aaaa", "last", 300.0)
    new_best, new_last = ckpt("20250102-000000-bbbb", "best", 200.0), ckpt("20250102-000000-bbbb", "last", 200.0)
    (tmp_path / "exp" / "20250103-000000-cccc").mkdir()  # a test run: no checkpoints, skipped
    # the older run was resumed after the newer one was written: its last.ckpt is the newest file
    assert find_checkpoint(tmp_path, "exp", "last") == old_last
    assert find_checkpoint(tmp_path, "exp", "best") == old_best  # "newest" is per run, not per file
    assert resolve_checkpoint("exp:best", tmp_path) == old_best
    os.utime(new_last, (400.0, 400.0))
    assert find_checkpoint(tmp_path, "exp", "best") == new_best
    assert resolve_checkpoint("exp:last", tmp_path) == new_last
    # an average written later into the older run's checkpoints/ does not make it the newest run
    ckpt("20250101-000000-aaaa", "avg", 500.0)
    assert find_checkpoint(tmp_path, "exp", "last") == new_last
    # a run id picks that run whatever the times
    assert find_checkpoint(tmp_path, "exp", "last", run_id="20250101-000000-aaaa") == old_last
    with pytest.raises(RunLookupError, match="run_id 20250103-000000-cccc"):
        find_checkpoint(tmp_path, "exp", "last", run_id="20250103-000000-cccc")


def test_best_of_a_newest_run_without_one_is_an_error_not_an_older_runs_best(tmp_path):
    """A fit stopped before its first validation writes last.ckpt only: `best` must not quietly
    evaluate an older run's weights, in the Lightning CLI's form or as EXPERIMENT:best."""
    from tx_suite.utils.runs import RunLookupError, find_checkpoint, resolve_checkpoint

    old = tmp_path / "exp" / "20250101-000000-aaaa" / "checkpoints"
    new = tmp_path / "exp" / "20250102-000000-bbbb" / "checkpoints"
    for directory, names, mtime in ((old, ("best", "last"), 100.0), (new, ("last",), 200.0)):
        directory.mkdir(parents=True)
        for name in names:
            (directory / f"{name}.ckpt").write_bytes(b"")
            os.utime(directory / f"{name}.ckpt", (mtime, mtime))
    assert find_checkpoint(tmp_path, "exp", "last") == new / "last.ckpt"
    with pytest.raises(RunLookupError, match=r"newest run of exp, .*20250102-000000-bbbb, has no best\.ckpt.*"
                                             r"older run's .*20250101-000000-aaaa/checkpoints/best\.ckpt"):
        find_checkpoint(tmp_path, "exp", "best")
    with pytest.raises(FileNotFoundError, match="'exp:best': .*20250102-000000-bbbb, has no best"):
        resolve_checkpoint("exp:best", tmp_path)
    assert find_checkpoint(tmp_path, "exp", "best", run_id="20250101-000000-aaaa") == old / "best.ckpt"
    (new / "best.ckpt").write_bytes(b"")  # its first validation came
    assert find_checkpoint(tmp_path, "exp", "best") == new / "best.ckpt"


def test_run_ids_sort_by_time_and_checkpoints_map_back_to_their_run(tmp_path):
    import re
    import time

    from tx_suite.utils.runs import new_run_id, run_dir_of_checkpoint

    times = [time.mktime((2025, m, d, h, 0, 0, 0, 0, -1)) for m, d, h in ((1, 2, 23), (2, 1, 0), (2, 1, 9), (11, 30, 5))]
    ids = [new_run_id(t) for t in times]
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids), ids
    assert ids[0].startswith("20250102-230000-") and sorted(ids) == ids  # lexical order is time order
    runs = tmp_path / "runs"
    ckpt = runs / "exp" / "r1" / "checkpoints" / "last.ckpt"
    assert run_dir_of_checkpoint(ckpt, runs) == (runs / "exp" / "r1").resolve()
    # a checkpoint elsewhere (not <runs_dir>/<exp>/<id>/checkpoints/) belongs to no run of this root
    assert run_dir_of_checkpoint(tmp_path / "other" / "exp" / "r1" / "checkpoints" / "last.ckpt", runs) is None
    assert run_dir_of_checkpoint(runs / "exp" / "r1" / "averaged" / "last.ckpt", runs) is None  # not in checkpoints/
    assert run_dir_of_checkpoint(runs / "exp" / "checkpoints" / "last.ckpt", runs) is None
    # checkpoints/ (or a run directory) linked to another disk: resolved, the file seemed to lie
    # outside the runs and `fit --ckpt_path last` started a new run instead of resuming in place
    elsewhere = tmp_path / "big_disk" / "r2-checkpoints"
    elsewhere.mkdir(parents=True)
    (elsewhere / "last.ckpt").touch()
    (runs / "exp" / "r2").mkdir(parents=True)
    (runs / "exp" / "r2" / "checkpoints").symlink_to(elsewhere)
    assert run_dir_of_checkpoint(runs / "exp" / "r2" / "checkpoints" / "last.ckpt", runs) == runs / "exp" / "r2"


def test_git_info_records_commit_and_whether_the_tree_is_dirty(tmp_path):
    import subprocess

    from tx_suite.utils.run_info import git_info

    assert git_info(tmp_path) == {"commit": None, "dirty": None, "branch": None}  # not a repository
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_info(tmp_path) == {"commit": head, "dirty": False, "branch": "main"}
    (tmp_path / "b.py").write_text("y = 2\n")  # an untracked source file changes what runs
    assert git_info(tmp_path) == {"commit": head, "dirty": True, "branch": "main"}


def test_run_info_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from tx_suite.utils.run_info import write_json

    path = tmp_path / "run_info.json"
    write_json(path, {"status": "running", "seed": 1})

    def disk_full(fd):  # the data did not reach the disk: the new file must not replace the old
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"status": "finished", "seed": 1})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "running", "seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_info.json"]  # no half-written temp file left
    write_json(path, {"status": "finished", "seed": 1})
    assert json.loads(path.read_text()) == {"status": "finished", "seed": 1}


def test_experiment_and_run_names_cannot_leave_their_directory(tmp_path):
    from tx_suite.utils.runs import experiment_dir, validate_name

    for good in ("mnist_vit", "multi30k_de_en-2.1", "20250101-000000-abcd", "A"):
        assert validate_name(good) == good
    for bad in ("a/b", "../x", "x/../../etc", ".hidden", "-x", "", "a b", "a\\b", "a:b"):
        with pytest.raises(ValueError, match="invalid experiment name"):
            validate_name(bad)
    with pytest.raises(ValueError, match="invalid run_id name"):
        validate_name("../r1", "run_id")
    assert experiment_dir(tmp_path, "exp") == tmp_path / "exp"


@pytest.mark.parametrize("content", [None, "{}", "[]", "{not json"])
def test_a_run_without_a_readable_run_info_can_be_resumed(runs_dir, capsys, content):
    """A run directory from an older version or a plain Trainer has no run_info.json: the resume
    referenced its own record inside itself ("Circular reference detected") and never trained."""
    assert fit("--trainer.max_epochs=1", "--run_id=old") == 0
    info = runs_dir / "tiny_mnist" / "old" / "run_info.json"
    if content is None:
        info.unlink()
    else:
        info.write_text(content)
    assert fit("--trainer.max_epochs=2", "--ckpt_path", "last") == 0, capsys.readouterr().err
    record = json.loads(info.read_text())
    assert record["status"] == "finished" and record["run_id"] == "old" and "resumes" not in record
    assert load_checkpoint(runs_dir / "tiny_mnist" / "old" / "checkpoints" / "last.ckpt")["epoch"] == 1
    if content == "{not json":  # what could not be read is kept, not overwritten
        assert (info.parent / "run_info.json.unreadable").read_text() == content


def test_a_run_id_taken_after_the_command_was_parsed_is_refused(runs_dir, capsys, monkeypatch):
    """Two fits with one --run_id both passed the exists() check at parse time and then wrote into
    one directory (one of them failed, the other's record said failed)."""
    from tx_suite.cli.lightning_cli import TxSuiteCLI

    real = TxSuiteCLI.instantiate_classes

    def another_run_claims_it(self):
        (runs_dir / "tiny_mnist" / "same").mkdir(parents=True)  # the other process, in between
        real(self)

    monkeypatch.setattr(TxSuiteCLI, "instantiate_classes", another_run_claims_it)
    assert fit("--trainer.max_epochs=1", "--run_id=same") == 2
    assert "run directory already exists" in capsys.readouterr().err
    assert list((runs_dir / "tiny_mnist" / "same").iterdir()) == []  # the other run's directory untouched
