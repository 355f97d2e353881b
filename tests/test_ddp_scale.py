"""Scale-out configs without a GPU: FSDP and bf16 diffs parse and wrap the core's layers, the SLURM
script passes node/GPU counts that match the Trainer, and ranks are read from the launcher."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tx_suite.cli.lightning_cli import launcher_rank
from tx_suite.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "configs" / "tiny_mnist.yaml")
SCALE = REPO / "experiments" / "scale"


def print_config(capsys, *args: str) -> dict:
    assert main(["fit", *args, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_fsdp_and_bf16_diffs_parse_over_an_experiment(capsys):
    config = print_config(capsys, "--config", TINY, "--config", str(SCALE / "fsdp.yaml"), "--config", str(SCALE / "bf16.yaml"))
    trainer = config["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["accelerator"] == "gpu" and trainer["devices"] == -1
    assert trainer["strategy"]["class_path"] == "pytorch_lightning.strategies.FSDPStrategy"
    init = trainer["strategy"]["init_args"]
    assert init["sharding_strategy"] == "FULL_SHARD" and init["state_dict_type"] == "full"
    assert config["model"]["class_path"] == "cli_fixtures.TinyMNISTClassifier"  # the experiment is untouched
    ddp = print_config(capsys, "--config", TINY, "--config", str(SCALE / "ddp.yaml"))["trainer"]
    assert ddp["strategy"] == "ddp" and ddp["accelerator"] == "gpu"


def test_fsdp_policy_wraps_each_layer_of_the_core_models(capsys):
    """The layer classes named in fsdp.yaml are the ones our models are built of: FSDP gets one unit
    per encoder/decoder layer (a wrong class would silently shard nothing)."""
    from pytorch_lightning.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from tx_suite.core import EncoderDecoder, TransformerConfig
    from tx_suite.models.vit import VisionTransformer

    init = print_config(capsys, "--config", TINY, "--config", str(SCALE / "fsdp.yaml"))["trainer"]["strategy"]["init_args"]

    def classes(paths):
        return {getattr(importlib.import_module(p.rsplit(".", 1)[0]), p.rsplit(".", 1)[1]) for p in paths}

    layers = classes(init["auto_wrap_policy"])
    assert classes(init["activation_checkpointing_policy"]) == layers
    policy = ModuleWrapPolicy(layers)
    seq2seq = EncoderDecoder(TransformerConfig(d_model=32, n_heads=2, d_ff=64), n_encoder_layers=2, n_decoder_layers=3)
    vit = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, d_model=32, n_layers=3, n_heads=2)
    for model, n_layers in ((seq2seq, 5), (vit, 3)):
        wrapped = [m for m in policy._run_policy(model, set(), {}) if m is not model]
        assert len(wrapped) == n_layers and all(type(m) in layers for m in wrapped)

    strategy = FSDPStrategy(auto_wrap_policy=layers, activation_checkpointing_policy=layers,
                            sharding_strategy=init["sharding_strategy"], state_dict_type=init["state_dict_type"])
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)  # built on CPU; runs on GPUs only


def sbatch_value(script: str, option: str) -> str:
    return re.search(rf"^#SBATCH --{option}=(\S+)", script, re.M).group(1)


def slurm_dry_run(runs_dir: Path, *args: str, returncode: int = 0) -> list[str]:
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_ID": "123", "SLURM_NNODES": "2",
           "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_SUBMIT_DIR": str(REPO), "TX_SUITE_RUNS_DIR": str(runs_dir),
           "TX_SUITE": f"{sys.executable} -m tx_suite", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_fit.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == returncode, proc.stderr
    return shlex.split(proc.stdout)


def test_slurm_script_passes_matching_counts_and_resumes_a_requeued_job(runs_dir, tmp_path, capsys):
    script = (REPO / "scripts" / "slurm_fit.sh").read_text()
    assert sbatch_value(script, "ntasks-per-node") == sbatch_value(script, "gpus-per-node")  # one process per GPU

    ddp = str(SCALE / "ddp.yaml")
    cmd = slurm_dry_run(runs_dir, "--config", TINY, "--config", ddp)
    assert cmd[:6] == ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", "tx_suite", "fit"]
    config = print_config(capsys, *cmd[6:])
    # devices arrives as the string "4", which Lightning parses as 4 devices, like --trainer.devices=4
    assert config["trainer"]["num_nodes"] == 2 and int(config["trainer"]["devices"]) == 4
    assert config["run_id"] == "slurm-123" and config["trainer"]["strategy"] == "ddp"

    # A requeued job continues in place. The run lives under the experiment tx-suite names (the
    # trainer-only ddp.yaml does not rename it), in the runs_dir it resolves (--runs_dir too).
    last = runs_dir / "tiny_mnist" / "slurm-123" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    cmd = slurm_dry_run(runs_dir, "--config", TINY, "--config", ddp)
    assert cmd[-2:] == ["--ckpt_path", str(last)] and "--run_id=slurm-123" in cmd
    other = tmp_path / "elsewhere" / "tiny_mnist" / "slurm-123" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    cmd = slurm_dry_run(runs_dir, "--config", TINY, "--runs_dir", str(tmp_path / "elsewhere"))
    assert cmd[-2:] == ["--ckpt_path", str(other)]
    last.unlink()
    cmd = slurm_dry_run(runs_dir, "--config", TINY, "--experiment", "tiny_mnist")
    assert "--run_id=slurm-123-r1" in cmd and "--ckpt_path" not in cmd  # died before any checkpoint: new run
    # that r1 run checkpointed and was preempted: the next requeue continues it
    r1 = runs_dir / "tiny_mnist" / "slurm-123-r1" / "checkpoints" / "last.ckpt"
    r1.parent.mkdir(parents=True)
    r1.write_bytes(b"")
    cmd = slurm_dry_run(runs_dir, "--config", TINY, "--experiment", "tiny_mnist")
    assert cmd[-2:] == ["--ckpt_path", str(r1)]
    # A bad config stops the script before srun starts anything.
    assert slurm_dry_run(runs_dir, "--config", TINY, "--trainer.max_epochz=1", returncode=2) == []


@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun
    ({"SLURM_PROCID": "5"}, 5),  # srun
    ({"LOCAL_RANK": "1"}, 1),  # Lightning's launcher, child on node 0
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # Lightning's launcher, main process of node 1
    ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0),
])
def test_launcher_rank(monkeypatch, env, rank):
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (launcher_rank() == 0) == (rank == 0)
    if "RANK" in env or "SLURM_PROCID" in env:
        assert launcher_rank() == rank


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_fsdp_without_a_gpu_says_fsdp_needs_one(runs_dir, capsys):
    assert main(["fit", "--config", TINY, "--config", str(SCALE / "fsdp.yaml")]) == 2
    err = capsys.readouterr().err
    assert "FSDP strategy" in err and "CUDA GPUs only" in err  # not "add --trainer.accelerator=cpu", a dead end
