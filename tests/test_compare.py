"""`tx-suite compare` on real runs of the tiny MNIST task: table, config diff, curves, HTML, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tx_suite.cli.main import main
from tx_suite.utils.checkpoint import load_checkpoint
from tx_suite.utils.compare import (config_diff, info_diff, load_run, load_runs, plot_curves, read_metrics, skipped_message,
                                    summarize)

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")
QUIET = ["--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three real runs: two learning rates of tiny_mnist, and one run of another experiment that
    never validates (so it shares only train/loss with the others)."""
    root = tmp_path_factory.mktemp("runs")
    common = ["fit", "--config", TINY, *QUIET, "--runs_dir", str(root)]
    assert main([*common, "--run_id", "lr3e-3", "--model.init_args.lr=0.003"]) == 0
    assert main([*common, "--run_id", "lr1e-2", "--model.init_args.lr=0.01"]) == 0
    assert main([*common, "--experiment", "no_val", "--run_id", "r1", "--trainer.max_epochs=1",
                 "--trainer.limit_val_batches=0", "--checkpoint.monitor=train/loss", "--checkpoint.mode=min"]) == 0
    return {"root": root, "a": root / "tiny_mnist" / "lr3e-3", "b": root / "tiny_mnist" / "lr1e-2",
            "other": root / "no_val" / "r1"}


def best_score(run: Path) -> float:
    """The best monitored value as ModelCheckpoint stored it in best.ckpt."""
    callbacks = load_checkpoint(run / "checkpoints" / "best.ckpt")["callbacks"]
    return float(callbacks[next(k for k in callbacks if k.startswith("ModelCheckpoint"))]["best_model_score"])


def revalidate(run: Path, runs_dir: Path) -> dict[str, float]:
    """val/* metrics of the run's last.ckpt, computed again by `tx-suite validate` (a run of its own)."""
    assert main(["validate", "--config", TINY, *QUIET, "--runs_dir", str(runs_dir), "--experiment", "check",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    (check,) = load_runs(["check"], runs_dir)
    shutil.rmtree(check.path)
    return {m: v[-1][1] for m, v in check.series.items()}


def test_json_table_matches_the_checkpoints_and_shows_the_differing_key(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config_diff"] == ["model.init_args.lr"]  # run dirs, ids and paths are not "differences"
    assert set(report["metrics"]) == {"train/loss", "val/acc", "val/loss"}
    by_id = {r["run_id"]: r for r in report["runs"]}
    for run_id, path, lr in (("lr3e-3", runs["a"], 0.003), ("lr1e-2", runs["b"], 0.01)):
        row = by_id[run_id]
        final = revalidate(path, tmp_path / "validate")
        assert row["metrics"]["val/acc"]["final"] == pytest.approx(final["val/acc"], abs=1e-6)
        assert row["metrics"]["val/loss"]["final"] == pytest.approx(final["val/loss"], abs=1e-6)
        assert row["metrics"]["val/acc"]["best"] == pytest.approx(best_score(path), abs=1e-6) == row["best"]
        assert row["metrics"]["val/loss"]["mode"] == "min" and row["metrics"]["val/acc"]["mode"] == "max"
        assert row["config"] == {"model.init_args.lr": lr} and row["status"] == "finished" and row["last_step"] == 15
        # lr 1e-2 gets worse in epoch 2: last.ckpt must still be the final state, not the best epoch's
        assert load_checkpoint(path / "checkpoints" / "last.ckpt")["global_step"] == 16
    assert by_id["lr3e-3"]["metrics"]["val/loss"]["final"] != by_id["lr1e-2"]["metrics"]["val/loss"]["final"]

    png, page = (out / "curves.png").read_bytes(), (out / "report.html").read_text()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "data:image/png;base64," in page and "model.init_args.lr" in page and "lr1e-2" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


def test_text_report_of_an_experiment_and_of_a_glob(runs, capsys):
    root = str(runs["root"])
    assert main(["compare", "tiny_mnist", "--runs_dir", root, "--no_plot"]) == 0
    by_experiment = capsys.readouterr().out
    assert main(["compare", f"{root}/tiny_mnist/lr*", "--no_plot"]) == 0
    by_glob = capsys.readouterr().out
    assert by_experiment == by_glob
    lines = by_experiment.splitlines()
    assert lines[0].split() == ["lr1e-2", "lr3e-3"]  # runs side by side, sorted
    assert next(line for line in lines if line.startswith("model.init_args.lr")).split() == \
        ["model.init_args.lr", "config", "0.01", "0.003"]
    assert {line.split()[0] for line in lines if "final" in line} == {"train/loss", "val/acc", "val/loss"}


def test_runs_of_different_experiments_show_only_shared_metrics(runs, capsys):
    assert main(["compare", str(runs["a"]), str(runs["other"]), "--no_plot", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["metrics"] == ["train/loss"]
    assert [r["label"] for r in report["runs"]] == ["tiny_mnist/lr3e-3", "no_val/r1"]
    assert "not shared: val/acc, val/loss" in captured.err
    diff = report["config_diff"]
    assert {"experiment", "trainer.max_epochs", "trainer.limit_val_batches", "checkpoint.monitor"} <= set(diff)

    loaded = load_runs([str(runs["a"]), str(runs["other"])])
    fig = plot_curves(loaded)
    (ax,) = [a for a in fig.axes if a.get_visible() and a.get_title()]
    assert ax.get_title() == "train/loss"
    for line, run in zip(ax.get_lines(), loaded):  # each line is exactly the run's logged series
        steps, values = zip(*run.series["train/loss"])
        assert list(line.get_xdata()) == list(steps) and list(line.get_ydata()) == pytest.approx(values)


def test_summary_and_diff_api(runs, tmp_path):
    a, b = load_run(runs["a"]), load_run(runs["b"])
    assert config_diff([a, b]) == {"model.init_args.lr": [0.003, 0.01]}
    assert config_diff([a, a]) == {}
    assert info_diff([a, b]) == {}  # same seed, commit and versions
    moved = tmp_path / "tiny_mnist" / "moved"
    shutil.copytree(runs["a"], moved, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((moved / "run_info.json").read_text())
    info["versions"]["torch"], info["git"]["commit"] = "0.0.1", "abc"
    (moved / "run_info.json").write_text(json.dumps(info))
    c = load_run(moved)
    assert info_diff([a, c]) == {"run_info.git.commit": [a.info["git"]["commit"], "abc"],
                                 "run_info.versions.torch": [a.info["versions"]["torch"], "0.0.1"]}
    assert config_diff([a, c]) == {}  # paths naming the run itself are not differences
    # 1 and 1.0 (one batch / all batches), 0 and false (seed 0 / no seed) compare equal in Python
    d = load_run(moved)
    a.config["trainer"]["limit_val_batches"], d.config["trainer"]["limit_val_batches"] = 1, 1.0
    a.config["seed_everything"], d.config["seed_everything"] = 0, False
    info["seed"] = False
    (moved / "run_info.json").write_text(json.dumps(info))
    assert config_diff([a, d]) == {"seed_everything": [0, False], "trainer.limit_val_batches": [1, 1.0]}
    # a run resumed in place records ckpt_path into its own checkpoints/; a fresh run has none:
    # no difference (it was shown as a row against "-"); nor is null in one run and absent in another
    a.config["ckpt_path"] = f"runs/{a.experiment}/{a.run_id}/checkpoints/last.ckpt"
    d.config["ckpt_path"] = None
    d.config["trainer"]["max_time"] = None
    a.config["trainer"].pop("max_time", None)
    assert config_diff([a, d]) == {"seed_everything": [0, False], "trainer.limit_val_batches": [1, 1.0]}
    d.config["ckpt_path"] = "elsewhere/pretrained.ckpt"  # a checkpoint of another run is a difference
    assert config_diff([a, d])["ckpt_path"] == [a.config["ckpt_path"], "elsewhere/pretrained.ckpt"]
    a.info["seed"] = 0
    assert info_diff([a, load_run(moved)])["run_info.seed"] == [0, False]
    summary = summarize([a, b], ["val/loss", "lr-Adam"])
    assert summary["lr3e-3"]["lr-Adam"]["best"] is None  # direction unknown: no "best"
    values = [v for _, v in a.series["val/loss"]]
    assert summary["lr3e-3"]["val/loss"]["best"] == min(values) and summary["lr3e-3"]["val/loss"]["final"] == values[-1]


def test_runs_of_one_name_in_two_runs_directories_keep_their_own_numbers(runs, tmp_path):
    """Same experiment and run id under two runs dirs: the labels were equal, so the table keyed
    by them showed the second run's metrics in both columns."""
    from tx_suite.utils.compare import labels

    twin = tmp_path / "elsewhere" / "tiny_mnist" / "lr3e-3"
    shutil.copytree(runs["b"], twin, ignore=shutil.ignore_patterns("checkpoints"))  # b's numbers, a's name
    a, b, c = load_run(runs["a"]), load_run(runs["b"]), load_run(twin)
    names = labels([a, c])
    assert len(set(names)) == 2 and names[1] == "elsewhere/tiny_mnist/lr3e-3", names
    summary = summarize([a, c], ["val/loss"])
    assert summary[names[0]]["val/loss"]["final"] == a.series["val/loss"][-1][1]
    assert summary[names[1]]["val/loss"]["final"] == b.series["val/loss"][-1][1] != a.series["val/loss"][-1][1]
    assert labels([a, a]) == ["tiny_mnist/lr3e-3 #1", "tiny_mnist/lr3e-3 #2"]


def test_a_step_logged_twice_keeps_the_later_value(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/acc\n0,1,2.0,\n0,3,1.5,\n0,3,1.4,\n0,2,1.8,\n0,3,,0.5\n")
    assert read_metrics(path) == {"train/loss": [(1, 2.0), (2, 1.8), (3, 1.4)], "val/acc": [(3, 0.5)]}


def test_a_run_that_diverged_shows_its_non_finite_final_value(tmp_path, capsys):
    """NaN and inf were dropped when reading metrics.csv: "final" showed the last finite loss, and a
    diverged run looked healthy. Best stays over the finite values; the JSON stays strict JSON."""
    import math

    from tx_suite.cli.compare import _json_safe
    from tx_suite.utils.compare import Run, format_report, plot_curves, summarize

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,1,2.0\n0,3,1.5\n0,5,nan\n0,7,inf\n")
    series = read_metrics(path)
    assert [s for s, _ in series["train/loss"]] == [1, 3, 5, 7] and series["train/loss"][-1][1] == math.inf
    run = Run(tmp_path, "exp", "r", series, config={"checkpoint": {"monitor": "train/loss"}})
    summary = summarize([run], ["train/loss"])["r"]["train/loss"]
    assert summary["final"] == math.inf and (summary["best"], summary["best_step"]) == (1.5, 3)
    assert "inf" in format_report([run], ["train/loss"])
    plot_curves([run], ["train/loss"])  # the finite points are drawn
    assert json.loads(json.dumps(_json_safe({"a": [math.nan, -math.inf, 1.0]}), allow_nan=False)) == {
        "a": ["nan", "-inf", 1.0]}


def test_paths_that_are_not_runs_are_one_line_errors(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    no_metrics = tmp_path / "exp" / "run"
    shutil.copytree(runs["a"], no_metrics, ignore=shutil.ignore_patterns("metrics.csv", "checkpoints"))
    cases = [
        ([str(tmp_path / "empty")], "not a run directory"),
        ([str(tmp_path / "missing")], "no such run, experiment or directory"),
        ([str(runs["a"]), str(no_metrics)], "has no metrics.csv"),
        ([str(tmp_path / "nothing*")], "no run directories match"),
    ]
    for targets, message in cases:
        assert main(["compare", *targets, "--no_plot"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tx-suite compare: error: ") and message in err[0], err


def test_runs_without_metrics_are_skipped_unless_named(runs, tmp_path, capsys):
    """A fast_dev_run (Lightning gives it no logger) leaves a run directory without metrics.csv; it
    must not break the comparison of the experiment it belongs to, nor of all runs."""
    root = tmp_path / "runs"
    shutil.copytree(runs["a"], root / "tiny_mnist" / "good")
    assert main(["fit", "--config", TINY, *QUIET, "--runs_dir", str(root), "--run_id", "dev",
                 "--trainer.fast_dev_run=true"]) == 0
    dev = root / "tiny_mnist" / "dev"
    assert (dev / "run_info.json").is_file() and not (dev / "metrics.csv").exists()
    capsys.readouterr()
    for targets in ([], ["tiny_mnist"], [str(root / "tiny_mnist" / "*")]):
        assert main(["compare", *targets, "--runs_dir", str(root), "--no_plot", "--json"]) == 0, targets
        out, err = capsys.readouterr()
        report = json.loads(out)
        assert [r["run_id"] for r in report["runs"]] == ["good"] and report["skipped"] == [str(dev.resolve())], targets
        assert "skipped 1 run(s) without metrics.csv" in err and "tiny_mnist/dev" in err, err
    with pytest.warns(UserWarning, match="tiny_mnist/dev"):
        assert [r.run_id for r in load_runs(["tiny_mnist"], root)] == ["good"]
    assert main(["compare", str(dev), "--no_plot"]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err


def test_evaluation_runs_are_left_out_of_an_experiments_training_runs(runs, tmp_path, capsys):
    """fit, then test of its checkpoint: the experiment holds both, which share no metric; comparing
    the experiment shows the fit runs and names the test run as skipped (naming it includes it)."""
    root = tmp_path / "runs"
    shutil.copytree(runs["a"], root / "tiny_mnist" / "a")
    shutil.copytree(runs["b"], root / "tiny_mnist" / "b")
    ckpt = root / "tiny_mnist" / "a" / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", TINY, *QUIET, "--runs_dir", str(root), "--run_id", "t", "--ckpt_path", str(ckpt)]) == 0
    test_run = root / "tiny_mnist" / "t"
    capsys.readouterr()
    assert main(["compare", "tiny_mnist", "--runs_dir", str(root), "--no_plot", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert sorted(r["run_id"] for r in report["runs"]) == ["a", "b"] and report["skipped"] == [str(test_run.resolve())]
    assert "skipped 1 test run(s): tiny_mnist/t" in err
    assert any(m.startswith("val/") for m in report["metrics"]), report["metrics"]
    assert main(["compare", str(test_run), "--runs_dir", str(root), "--no_plot", "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["t"]


def test_unknown_metric_is_named(runs, capsys, tmp_path):
    assert main(["compare", str(runs["a"]), "--metrics", "val/acc,val/nope", "--no_plot"]) == 0
    out, err = capsys.readouterr()
    assert "no run logged val/nope; logged: " in err and "val/acc" in err.split("logged: ")[1]
    assert "val/acc" in out and "val/nope" not in out  # the known one is shown, the unknown one dropped
    # Only unknown names: an error, and no empty plot over an earlier report.
    report = tmp_path / "cmp"
    assert main(["compare", str(runs["a"]), "--metrics", "val/acc", "--out", str(report)]) == 0
    before = (report / "curves.png").read_bytes()
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), "--metrics", "val/nope,val/typo", "--out", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tx-suite compare: error: no run logged val/nope, val/typo; logged: ") and err.count("\n") == 1
    assert (report / "curves.png").read_bytes() == before
    assert main(["compare", str(runs["a"]), "--metrics", ",", "--no_plot"]) == 2
    assert "--metrics names no metric" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["compare", str(runs["a"]), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file; it names a directory" in capsys.readouterr().err


def test_config_diff_leaves_out_values_that_name_the_run(tmp_path):
    from tx_suite.utils.compare import Run

    def run(run_id: str, lr: float) -> Run:
        path = tmp_path / "exp" / run_id
        config = {"model": {"init_args": {"lr": lr}}, "run_id": run_id,
                  "checkpoint": {"dirpath": f"runs/exp/{run_id}/checkpoints"},  # relative --runs_dir
                  "trainer": {"default_root_dir": str(path),
                              "logger": [{"init_args": {"save_dir": str(path)}},
                                         {"init_args": {"name": f"exp/{run_id}", "id": run_id}}]}}
        return Run(path=path, experiment="exp", run_id=run_id, series={}, config=config)

    assert config_diff([run("a", 1e-3), run("b", 3e-3)]) == {"model.init_args.lr": [1e-3, 3e-3]}


def test_a_resumed_run_compares_with_its_newest_config(runs, tmp_path):
    run = tmp_path / "tiny_mnist" / "r"
    shutil.copytree(runs["a"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["trainer"]["max_epochs"] = 7  # as a resume with --trainer.max_epochs=7 records it
    (run / "config.resume-20261203-120000.yaml").write_text(yaml.safe_dump(config))
    assert load_run(run).config["trainer"]["max_epochs"] == 7


def test_a_resume_that_fails_before_training_leaves_the_run_as_it_was(runs, tmp_path, capsys):
    """The resume's config was written at setup, so compare showed the failed attempt's settings
    (hidden 64 here) and status for weights and metrics that are still the original run's."""
    run = tmp_path / "tiny_mnist" / "r"
    shutil.copytree(runs["a"], run)
    assert main(["fit", "--config", TINY, *QUIET, "--runs_dir", str(tmp_path), "--trainer.max_epochs=3",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--model.init_args.hidden=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # was exit 1 with torch's list of every tensor
    assert "error: the checkpoint's weights do not fit the model the config builds" in err[-1], err
    assert len(err[-1]) < 500 and "(a --model.init_args value that changes its shape?): size mismatch for net.0.weight" in err[-1]
    assert not list(run.glob("config.resume-*.yaml"))
    resumed = load_run(run)
    assert resumed.info["resumes"][-1]["status"] == "failed" and resumed.info["resumes"][-1]["trained"] is False
    assert resumed.status == "finished" and resumed.config == load_run(runs["a"]).config
    # a resume that trains is recorded as before: its config and its status
    assert main(["fit", "--config", TINY, *QUIET, "--runs_dir", str(tmp_path), "--trainer.max_epochs=3",
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    resumed = load_run(run)
    assert len(list(run.glob("config.resume-*.yaml"))) == 1 and resumed.config["trainer"]["max_epochs"] == 3
    assert resumed.status == "finished" and "trained" not in resumed.info["resumes"][-1]


def test_skipped_message_offers_naming_only_for_runs_that_naming_includes(tmp_path):
    """Naming an evaluation run's directory includes it, naming a run without metrics.csv is an
    error ("has no metrics.csv"): the stderr line must not tell the user to do the latter."""
    dev = tmp_path / "exp" / "dev"  # a fast_dev_run: run_info.json, no metrics.csv
    dev.mkdir(parents=True)
    (dev / "run_info.json").write_text(json.dumps({"subcommand": "fit"}))
    test_run = tmp_path / "exp" / "t"
    test_run.mkdir()
    (test_run / "run_info.json").write_text(json.dumps({"subcommand": "test"}))
    (test_run / "metrics.csv").write_text("epoch,step,test/acc\n0,0,0.5\n")

    msg = skipped_message([dev])
    assert "1 run(s) without metrics.csv" in msg and "exp/dev" in msg and "include it" not in msg, msg
    msg = skipped_message([dev, test_run])
    assert "1 test run(s): exp/t" in msg and msg.endswith("(name a test run directory to include it)"), msg
    # A test run that logged nothing is skipped for that, and naming it is an error as well.
    (test_run / "metrics.csv").unlink()
    msg = skipped_message([test_run])
    assert "1 run(s) without metrics.csv" in msg and "include it" not in msg, msg
    # A predict run logs no metrics by design: it was described as failed / fast_dev_run.
    predict_run = tmp_path / "exp" / "p"
    predict_run.mkdir()
    (predict_run / "run_info.json").write_text(json.dumps({"subcommand": "predict"}))
    msg = skipped_message([predict_run])
    assert msg == "skipped 1 predict run(s) (predict logs no metrics): exp/p", msg


def test_differing_keys_among_three_runs_and_best_by_the_checkpoints_own_mode(tmp_path):
    from tx_suite.utils.compare import Run, summarize

    def run(name, lr, mode=None):
        ckpt = {"monitor": "val/acc", **({"mode": mode} if mode else {})}
        return Run(tmp_path / name, "exp", name, {"val/acc": [(1, 0.2), (2, 0.9), (3, 0.5)]},
                   config={"model": {"lr": lr, "d": 8}, "checkpoint": ckpt})

    a, b, c = run("a", 0.1), run("b", 0.2), run("c", 0.1, "max")
    # the first and last runs agree on lr; the middle one does not: still a difference
    assert config_diff([a, b, c]) == {"model.lr": [0.1, 0.2, 0.1], "checkpoint.mode": [None, None, "max"]}
    assert config_diff([a, a, a]) == {}
    # no checkpoint.mode: ModelCheckpoint's default "min" chose best.ckpt, so the best is the minimum
    summary = summarize([a, c], ["val/acc"])
    assert summary["a"]["val/acc"] == {"final": 0.5, "best": 0.2, "best_step": 1, "mode": "min"}
    assert summary["c"]["val/acc"] == {"final": 0.5, "best": 0.9, "best_step": 2, "mode": "max"}


def test_best_direction_from_the_metric_name():
    """The "best" column's direction when a metric is not the run's checkpoint monitor: a codebook's
    perplexity (VQ-VAE) is better higher, a language model's perplexity lower."""
    from tx_suite.utils.compare import best_mode

    expected = {"val/ppl": "min", "test/perplexity": "min", "val/loss": "min", "val/bleu": "max",
                "val/codebook_perplexity": "max", "train/codebook_usage": "max", "val/psnr": "max",
                "val/bits_per_image_token": "min", "test/bits_per_image_token_heldout": "min", "lr-AdamW": None}
    assert {m: best_mode(m) for m in expected} == expected


def test_info_diff_sees_a_resume_under_another_commit_or_torch(runs, tmp_path):
    """A run resumed after an upgrade was made of two versions; compared with a run made of the
    first only, that is a difference (the top-level record alone hid it)."""
    a = load_run(runs["a"])
    resumed = tmp_path / "tiny_mnist" / "resumed"
    shutil.copytree(runs["a"], resumed, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((resumed / "run_info.json").read_text())
    first = info["versions"]["torch"]
    record = {**info, "versions": {**info["versions"], "torch": "9.9.9"}}
    info["resumes"] = [{**record, "trained": False}]  # ended before training: not part of the run
    (resumed / "run_info.json").write_text(json.dumps(info))
    assert info_diff([a, load_run(resumed)]) == {}
    info["resumes"].append(record)
    (resumed / "run_info.json").write_text(json.dumps(info))
    assert info_diff([a, load_run(resumed)]) == {"run_info.versions.torch": [first, [first, "9.9.9"]]}
