"""Every translation experiment config builds its task and datamodule, and they agree."""

from pathlib import Path

import pytest

from cli_fixtures import build
from tx_suite.utils.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "translation"
CONFIGS = sorted(p.name for p in EXPERIMENTS.glob("*.yaml") if p.name != "base.yaml")


def test_both_directions_and_the_quickstart_have_configs():
    assert {"multi30k_de_en.yaml", "multi30k_en_de.yaml", "multi30k_de_en_quickstart.yaml",
            "multi30k_en_de_tiny.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_matching_task_and_datamodule(name):
    cfg = load_config(EXPERIMENTS / name)
    task, data = build(cfg["model"]), build(cfg["data"])
    assert task.hparams.vocab_size >= data.hparams.vocab_size
    src, tgt = name.removesuffix(".yaml").removeprefix("multi30k_").split("_")[:2]
    assert (data.hparams.src_lang, data.hparams.tgt_lang) == (src, tgt)
    assert cfg["checkpoint"] == {**cfg["checkpoint"], "monitor": "val/bleu", "mode": "max"}
    assert cfg["trainer"]["max_epochs"] >= 1


def test_tiny_config_is_the_published_recipe():
    cfg = load_config(EXPERIMENTS / "multi30k_en_de_tiny.yaml")
    hp = build(cfg["model"]).hparams
    assert (hp.d_model, hp.d_ff, hp.n_heads, hp.n_encoder_layers, hp.n_decoder_layers) == (128, 256, 4, 4, 4)
    assert (hp.dropout, hp.lr, hp.warmup_steps) == (0.3, 5e-3, 2000)
    assert cfg["data"]["init_args"]["max_tokens"] == 8192 and cfg["trainer"]["max_steps"] == 8000
