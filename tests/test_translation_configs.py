"""Every translation experiment config builds its task and datamodule, and they agree."""

from pathlib import Path

import pytest

from cli_fixtures import build
from tx_suite.data.bpe import EOS_ID
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


def test_fairseq_tiny_config_differs_from_the_bf16_one_in_ffn_dropout_and_averaging_only():
    """The reference's fairseq model has no dropout inside the FFN and averages 10 epochs; the
    configs behind the recorded tiny results keep torch.nn.Transformer's single rate."""
    def flat(name):
        cfg = load_config(EXPERIMENTS / name)
        averaging = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("CheckpointAveraging")]
        return {**cfg["model"]["init_args"], "averaging": averaging, "trainer": cfg["trainer"],
                "ffn_p": build(cfg["model"]).model.transformer.decoder.layers[0].ffn.dropout.p}

    ours, ref = flat("multi30k_en_de_tiny_bf16.yaml"), flat("multi30k_en_de_tiny_fairseq.yaml")
    assert (ours["ffn_p"], ref["ffn_p"]) == (0.3, 0.0)
    assert (ours["averaging"], ref["averaging"]) == ([{"last_n": 5}], [{"last_n": 10}])
    diff = {k for k in ours.keys() | ref.keys() if ours.get(k) != ref.get(k)} - {"trainer"}
    assert diff == {"activation_dropout", "averaging", "ffn_p"}
    assert {k: v for k, v in ours["trainer"].items() if k != "callbacks"} == \
        {k: v for k, v in ref["trainer"].items() if k != "callbacks"}


def test_fairseq_lc_config_differs_from_the_fairseq_one_in_lowercasing_only():
    lc, cased = (load_config(EXPERIMENTS / n) for n in ("multi30k_en_de_tiny_fairseq_lc.yaml",
                                                        "multi30k_en_de_tiny_fairseq.yaml"))
    assert build(lc["data"]).hparams.lowercase is True
    assert lc["data"]["init_args"].pop("lowercase") is True
    assert cased["data"]["init_args"].get("lowercase", False) is False
    cased["data"]["init_args"].pop("lowercase", None)
    assert (lc["data"], lc["model"], lc["trainer"]) == (cased["data"], cased["model"], cased["trainer"])


def test_patience_config_adds_fairseqs_early_stop_on_validation_loss_and_nothing_else():
    """fairseq's `--patience 10`: stop when the validation loss has not improved for 10 validations."""
    pat, lc = (load_config(EXPERIMENTS / n) for n in ("multi30k_en_de_tiny_fairseq_lc_patience.yaml",
                                                      "multi30k_en_de_tiny_fairseq_lc.yaml"))
    added = [c for c in pat["trainer"]["callbacks"] if c not in lc["trainer"]["callbacks"]]
    assert [c["class_path"] for c in added] == ["pytorch_lightning.callbacks.EarlyStopping"]
    stop = build(added[0])
    assert (stop.monitor, stop.patience, stop.mode, stop.min_delta) == ("val/loss", 10, "min", 0)
    assert pat["trainer"].get("check_val_every_n_epoch", 1) == 1  # patience counts epochs, as fairseq's
    pat["trainer"]["callbacks"].remove(added[0])
    assert (pat["data"], pat["model"], pat["trainer"]) == (lc["data"], lc["model"], lc["trainer"])


def test_fairseq_model_config_changes_sinusoids_cross_attention_init_and_decoder_start_only():
    init, lc = (load_config(EXPERIMENTS / n) for n in ("multi30k_en_de_tiny_fairseq_lc_model.yaml",
                                                       "multi30k_en_de_tiny_fairseq_lc.yaml"))
    task = build(init["model"])
    model = task.model
    assert (model.src_embed.pos.layout, model.src_embed.pos.start) == ("fairseq", 2)
    assert model.transformer.decoder.cfg.cross_attn_init == "fused"
    assert task.start_id == EOS_ID
    assert {k: v for k, v in init["model"]["init_args"].items() if lc["model"]["init_args"].get(k) != v} == \
        {"pos_encoding": "sinusoidal_fairseq", "cross_attn_init": "fused", "decoder_start": "eos"}
    assert (init["data"], init["trainer"]) == (lc["data"], lc["trainer"])


def test_bpe10k_config_changes_the_vocabulary_size_only():
    big, init = (load_config(EXPERIMENTS / n) for n in ("multi30k_en_de_tiny_fairseq_lc_model_bpe10k.yaml",
                                                        "multi30k_en_de_tiny_fairseq_lc_model.yaml"))
    assert big["model"]["init_args"].pop("vocab_size") == big["data"]["init_args"].pop("vocab_size") == 10000
    init["model"]["init_args"].pop("vocab_size")
    init["data"]["init_args"].pop("vocab_size")
    assert (big["data"], big["model"], big["trainer"]) == (init["data"], init["model"], init["trainer"])
