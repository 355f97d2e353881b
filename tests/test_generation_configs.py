"""Every text-to-image experiment config parses through `tx-suite fit --print_config` (class paths,
argument names and types checked by jsonargparse), and stage 2 names its stage 1."""

from pathlib import Path

import pytest
import yaml

from tx_suite.cli.main import main
from tx_suite.utils.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "generation"
CONFIGS = sorted(p.name for p in EXPERIMENTS.glob("*.yaml") if not p.name.startswith("base"))


def test_both_datasets_have_both_stages():
    assert {"vqvae_mnist.yaml", "t2i_mnist.yaml", "vqvae_emoji.yaml", "t2i_emoji.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses(name, capsys, runs_dir):
    assert main(["fit", "--config", str(EXPERIMENTS / name), "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["experiment"] == name.removesuffix(".yaml") and cfg["trainer"]["max_epochs"] >= 1
    init = cfg["model"]["init_args"]
    if name.startswith("t2i_"):
        stage1 = init["tokenizer_ckpt"].split(":")[0]
        assert f"{stage1}.yaml" in CONFIGS
        # stage 2 trains on the data its tokenizer was trained on
        assert cfg["data"]["class_path"] == load_config(EXPERIMENTS / f"{stage1}.yaml")["data"]["class_path"]
    assert not runs_dir.exists()
