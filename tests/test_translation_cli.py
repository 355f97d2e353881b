"""The translation configs through the real `tx-suite` CLI: they parse, and fit -> test -> translate
runs on a Multi30k slice with a tiny model (the quickstart config with size overrides)."""

from pathlib import Path

import pytest
import yaml

from tx_suite.cli.main import main

EXP = Path(__file__).resolve().parents[1] / "experiments" / "translation"
QUICK = str(EXP / "multi30k_de_en_quickstart.yaml")


@pytest.mark.parametrize("name", ["multi30k_de_en_quickstart", "multi30k_de_en", "multi30k_en_de"])
def test_configs_parse(name, capsys, runs_dir):
    assert main(["fit", "--config", str(EXP / f"{name}.yaml"), "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    model, data = cfg["model"], cfg["data"]
    assert model["class_path"] == "tx_suite.tasks.translation.TranslationTask"
    assert data["class_path"] == "tx_suite.data.multi30k_datamodule.Multi30kDataModule"
    assert model["init_args"]["vocab_size"] >= data["init_args"]["vocab_size"]
    assert model["init_args"]["label_smoothing"] == 0.1 and model["init_args"]["beta2"] == 0.98
    assert cfg["checkpoint"]["monitor"] == "val/bleu" and cfg["checkpoint"]["mode"] == "max"
    langs = (data["init_args"]["src_lang"], data["init_args"]["tgt_lang"])
    assert langs == (("en", "de") if name.endswith("en_de") else ("de", "en"))
    if name.endswith("quickstart"):
        assert cfg["trainer"]["max_time"] == "00:00:11:00"


def test_fit_test_translate_through_the_cli(runs_dir, tmp_path, capsys):
    tiny = ["--model.init_args.vocab_size=800", "--model.init_args.d_model=32", "--model.init_args.n_heads=2",
            "--model.init_args.d_ff=64", "--model.init_args.n_encoder_layers=1", "--model.init_args.n_decoder_layers=1"]
    data = ["--data.init_args.vocab_size=800", "--data.init_args.train_limit=500",
            f"--data.init_args.cache_dir={tmp_path}"]
    assert main(["fit", "--config", QUICK, *tiny, *data, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                 "--trainer.limit_val_batches=2"]) == 0
    (run,) = (runs_dir / "multi30k_de_en_quickstart").iterdir()
    assert {"best.ckpt", "last.ckpt", "averaged.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}
    assert (run / "val_samples.tsv").is_file() and list((run / "attention").glob("*.png"))
    assert main(["test", "--config", QUICK, *data, "--ckpt_path", "last", "--trainer.limit_test_batches=1"]) == 0
    out, err = capsys.readouterr()
    assert "test/bleu" in out and ", beam 5," in out + err
    # test-time decoding options on the command line win over the checkpoint's hyper-parameters
    assert main(["test", "--config", QUICK, *data, "--ckpt_path", "last", "--trainer.limit_test_batches=1",
                 "--model.init_args.beam_size=1"]) == 0
    out, err = capsys.readouterr()
    assert ", beam 1," in out + err and "model.beam_size over the checkpoint's" in err
    # in a config file too, for what does not shape the weights; the architecture stays the checkpoint's
    beam1 = tmp_path / "beam1.yaml"
    beam1.write_text("model:\n  init_args:\n    beam_size: 1\n    d_model: 64\n")
    assert main(["test", "--config", QUICK, *data, "--config", str(beam1), "--experiment", "multi30k_de_en_quickstart", "--ckpt_path", "last",
                 "--trainer.limit_test_batches=1"]) == 0
    out, err = capsys.readouterr()
    assert ", beam 1," in out + err and "the config's model.beam_size=1 over the checkpoint's" in err
    assert "the checkpoint's model.d_ff=64, model.d_model=32," in err and "over the config's (the weights" in err
    # and in a file given to --model, which jsonargparse reads itself (sdpa_backend: in no --config file)
    model_file = tmp_path / "model_math.yaml"
    model_file.write_text("class_path: tx_suite.tasks.translation.TranslationTask\ninit_args:\n  sdpa_backend: math\n")
    assert main(["test", "--config", QUICK, *data, "--model", str(model_file), "--ckpt_path", "last",
                 "--trainer.limit_test_batches=1"]) == 0
    out, err = capsys.readouterr()
    assert "the config's model.sdpa_backend='math' over the checkpoint's" in err
    # predict writes its translations (bucketed batches) back in corpus order, with their indices
    assert main(["predict", "--config", QUICK, *data, "--ckpt_path", "last", "--trainer.limit_predict_batches=2"]) == 0
    (tsv,) = runs_dir.glob("multi30k_de_en_quickstart/*/predictions.tsv")
    pairs = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()]
    index, lines = [int(i) for i, _ in pairs], dict(pairs)
    assert len(index) > 10 and index == sorted(index) and len(set(index)) == len(index)
    capsys.readouterr()  # predict's progress bar
    # and each line is its index's translation: `translate` (same checkpoint, same beam) gives it again
    from tx_suite.data.multi30k import read_pair

    src, _ = read_pair("test_2016_flickr", "de", "en", cache_dir=tmp_path)
    some = index[::40]
    (tmp_path / "some.de").write_text("".join(src[i] + "\n" for i in some), encoding="utf-8")
    assert main(["translate", "--ckpt_path", "last", "--experiment", "multi30k_de_en_quickstart",
                 "-i", str(tmp_path / "some.de")]) == 0
    again = capsys.readouterr().out.splitlines()
    # Other batch-mates, other padding: a near-tie in this 3-step model's logits may flip a token,
    # so not every line need match; lines under the wrong index match ~1 in 10.
    assert len(again) == len(some) and sum(a == lines[str(i)] for a, i in zip(again, some)) >= 0.8 * len(some)
    assert main(["translate", "--ckpt_path", "last", "--experiment", "multi30k_de_en_quickstart", "--beam_size", "2",
                 "Ein Hund.", ""]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 3  # two lines, each ended by a newline
    assert main(["translate", "--ckpt_path", "multi30k_de_en_quickstart:last", "--beam_size", "2", "Ein Hund."]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_data_vocabulary_smaller_than_the_models_trains(runs_dir, tmp_path):
    """docs: model.vocab_size >= data.vocab_size is enough. Lightning refused to log the two
    different vocab_size values (``Error while merging hparams``) before training."""
    tiny = ["--model.init_args.vocab_size=800", "--model.init_args.d_model=32", "--model.init_args.n_heads=2",
            "--model.init_args.d_ff=64", "--model.init_args.n_encoder_layers=1", "--model.init_args.n_decoder_layers=1"]
    assert main(["fit", "--config", QUICK, *tiny, "--data.init_args.vocab_size=600", "--data.init_args.train_limit=500",
                 f"--data.init_args.cache_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                 "--trainer.limit_val_batches=1"]) == 0
