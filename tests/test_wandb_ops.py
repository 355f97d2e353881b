"""W&B operations without a network: checkpoints as model artifacts only online, sweep commands
accepted by `tx-suite fit`, and a sweep agent's run id kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonargparse import dict_to_namespace

from tx_suite.cli.loggers import configure_loggers, wandb_log_model
from tx_suite.cli.main import main
from tx_suite.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "configs" / "tiny_mnist.yaml")
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def test_log_model_only_when_online():
    assert wandb_log_model(True, "online") is True
    assert wandb_log_model("all", "online") == "all"
    assert wandb_log_model(False, "online") is False
    for mode in ("offline", "disabled"):
        for configured in (True, "all", False):
            assert wandb_log_model(configured, mode) is False


@pytest.mark.parametrize("mode, expected", [("online", True), ("offline", False)])
def test_base_config_logger_uploads_checkpoints_only_online(tmp_path, mode, expected):
    from pytorch_lightning.loggers import WandbLogger

    loggers = dict_to_namespace(load_config(REPO / "experiments" / "base" / "trainer.yaml"))["trainer"]["logger"]
    out = configure_loggers(loggers, run_dir=tmp_path, experiment="e", subcommand="fit", tags=[],
                            wandb_mode=mode, wandb_id="r1")
    (wandb_cfg,) = [e for e in out if e.class_path.endswith("WandbLogger")]
    logger = WandbLogger(**vars(wandb_cfg.init_args))  # builds the logger; starts no W&B run
    assert logger._log_model is expected and logger._wandb_init["mode"] == mode
    disabled = configure_loggers(loggers, run_dir=tmp_path, experiment="e", subcommand="fit", tags=[],
                                 wandb_mode="disabled", wandb_id="r1")
    assert [e.class_path for e in disabled] == ["tx_suite.cli.loggers.RunCSVLogger"]


def agent_command(sweep: dict) -> list[str]:
    """The command line `wandb agent` would run for the first value of each parameter, built with
    wandb's own helpers and the substitution loop of wandb/wandb_agent.py (Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    def first(spec: dict):
        return spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))

    run = {"args": {name: {"value": first(spec)} for name, spec in sweep["parameters"].items()}}
    sweep_vars = sweep_utils.create_sweep_command_args(run)
    sweep_vars.update(interpreter=["python"], program=[sweep.get("program", "")], env=["/usr/bin/env"])
    out: list[str] = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        out += (sweep_vars.get(chunk[2:-1]) or []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_command_is_accepted_by_fit(path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the agent runs from the repository root
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"].startswith("val/") and sweep["project"] == "tx-suite"
    command = agent_command(sweep)
    assert command[:5] == ["/usr/bin/env", "python", "-m", "tx_suite", "fit"]
    assert all(a.startswith("--") for a in command[-len(sweep["parameters"]):])
    assert main([*command[4:], "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for name, spec in sweep["parameters"].items():
        node = config
        for key in name.split("."):
            node = node[key]
        expected = spec["values"][0] if "values" in spec else spec["min"]
        assert node == pytest.approx(expected), name


def test_sweep_agent_run_id_becomes_the_wandb_id(runs_dir, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun1")
    assert main(["fit", "--config", TINY, "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]) == 0
    (run,) = (runs_dir / "tiny_mnist").iterdir()
    assert json.loads((run / "run_info.json").read_text())["wandb"]["id"] == "sweeprun1"


def test_a_resumed_run_keeps_its_own_wandb_id_under_a_sweep_run_id(runs_dir, monkeypatch):
    """WANDB_RUN_ID names a new run's W&B id; a resumed run continues its own W&B run."""
    quick = ["fit", "--config", TINY, "--trainer.enable_progress_bar=false", "--trainer.limit_train_batches=2",
             "--trainer.limit_val_batches=1"]
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    assert main([*quick, "--trainer.max_epochs=1", "--run_id=own"]) == 0
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun1")
    assert main([*quick, "--trainer.max_epochs=2", "--ckpt_path", "last"]) == 0
    info = json.loads((runs_dir / "tiny_mnist" / "own" / "run_info.json").read_text())
    assert info["wandb"]["id"] == "own" and info["resumes"][-1]["wandb"]["id"] == "own", info
