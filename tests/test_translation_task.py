"""TranslationTask end to end with Lightning on a Multi30k slice: fit, callbacks, averaging, test,
checkpoint contents, and the translate command on awkward input."""

import codecs
import itertools
import math
import os
import unicodedata

import pytest
import pytorch_lightning as pl
import torch

from tx_suite.cli.translate import load_translator, main as translate_main, translate_lines
from tx_suite.data.bpe import EOS_ID
from tx_suite.data.multi30k_datamodule import Multi30kDataModule
from tx_suite.tasks.callbacks.translation_attention import TranslationAttentionMaps
from tx_suite.tasks.callbacks.translation_averaging import (CheckpointAveraging, average_checkpoints,
                                                           average_snapshots, average_state_dicts)
from tx_suite.tasks.callbacks.translation_averaging import main as averaging_main
from tx_suite.tasks.callbacks.translation_samples import TranslationSamples
from tx_suite.tasks.translation import TranslationTask

os.environ.setdefault("WANDB_MODE", "disabled")
TINY = dict(vocab_size=800, d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=1,
            lr=3e-3, warmup_steps=4, beam_size=3)


def _dm(cache):
    return Multi30kDataModule(train_limit=600, vocab_size=800, max_tokens=1024, max_len=64, cache_dir=str(cache))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    pl.seed_everything(0)
    task = TranslationTask(**TINY)
    callbacks = [TranslationSamples(n=3), TranslationAttentionMaps(n_sentences=1), CheckpointAveraging(last_n=2),
                 pl.callbacks.ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1, filename="e{epoch}")]
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0,
                         default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks)
    trainer.fit(task, _dm(cache))
    test = pl.Trainer(default_root_dir=root / "test", logger=False, enable_progress_bar=False, limit_test_batches=2,
                      enable_model_summary=False)
    metrics = test.test(task, _dm(cache), ckpt_path=str(callbacks[2].path), weights_only=True)[0]
    return {"root": root, "task": task, "trainer": trainer, "metrics": metrics, "cache": cache,
            "averaged": callbacks[2].path, "attention": callbacks[1].saved}


def test_fit_logs_metrics_and_artifacts(run):
    m = run["trainer"].callback_metrics
    for key in ("train/loss", "train/tokens_per_s", "val/loss", "val/ppl", "val/bleu", "val/chrf", "val/bleu_lc"):
        assert key in m, key
    assert float(m["val/ppl"]) == pytest.approx(float(torch.exp(m["val/nll"])), rel=1e-4)
    lines = (run["root"] / "val_samples.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["epoch", "step", "source", "reference", "hypothesis"]
    assert len(lines) == 1 + 3 * 3 and all(len(line.split("\t")) == 5 for line in lines)
    assert len(run["attention"]) == 3 * 2  # each epoch: encoder self + cross for one sentence
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in run["attention"])


def test_test_scores_and_hypotheses(run):
    m = run["metrics"]
    assert {"test/bleu", "test/bleu_lc", "test/chrf", "test/loss", "test/ppl", "test/sent_per_s"} <= set(m)
    hyps = (run["root"] / "test" / "test_hypotheses.txt").read_text().splitlines()
    # limit_test_batches=2 decoded a subset: still one line per test sentence, in corpus order
    dm = _dm(run["cache"])
    dm.setup("test")
    decoded = {i for b in list(dm.test_dataloader())[:2] for i in b["index"].tolist()}
    assert len(hyps) == len(dm.dataset(dm.hparams.test_split)) == 1000
    assert {i for i, h in enumerate(hyps) if h} <= decoded and sum(map(bool, hyps)) > 0.9 * len(decoded)
    # the logged scores are sacreBLEU's on the written hypotheses against the raw references of
    # the decoded sentences (only the keys were checked: BLEU of the references against
    # themselves passed)
    import sacrebleu

    order = sorted(decoded)
    refs = [dm.dataset(dm.hparams.test_split).tgt_text[i] for i in order]
    sys_ = [hyps[i] for i in order]
    assert m["test/bleu"] == pytest.approx(sacrebleu.corpus_bleu(sys_, [refs]).score, abs=1e-3)
    assert m["test/bleu_lc"] == pytest.approx(sacrebleu.corpus_bleu(sys_, [refs], lowercase=True).score, abs=1e-3)
    assert m["test/chrf"] == pytest.approx(sacrebleu.corpus_chrf(sys_, [refs]).score, abs=1e-3)
    assert 0 < m["test/chrf"] < 100


def test_checkpoint_holds_tokenizer_and_loads_weights_only(run):
    ckpt = torch.load(run["averaged"], map_location="cpu", weights_only=True)
    assert "tokenizer" in ckpt and ckpt["hyper_parameters"]["d_model"] == 32
    restored = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True)
    assert restored.tokenizer.same_as(run["task"].tokenizer)


def test_averaging_averages(run, tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 7  # ints from the last
    epochs = sorted((run["root"] / "checkpoints").glob("e*.ckpt"))
    assert len(epochs) == 3
    avg = average_checkpoints(epochs[-2:], tmp_path / "avg.ckpt")
    sds = [torch.load(p, weights_only=True)["state_dict"] for p in epochs[-2:]]
    key = "model.transformer.encoder.layers.0.ffn.fc1.weight" if "model.transformer.encoder.layers.0.ffn.fc1.weight" in sds[0] else next(
        k for k, v in sds[0].items() if v.is_floating_point() and v.dim() == 2)
    assert not torch.equal(sds[0][key], sds[1][key])
    torch.testing.assert_close(avg["state_dict"][key], (sds[0][key] + sds[1][key]) / 2)
    assert {"optimizer_states", "lr_schedulers"} <= set(torch.load(epochs[-1], weights_only=True))
    assert not {"optimizer_states", "lr_schedulers"} & set(avg)  # neither matches the averaged weights
    # The callback's in-memory average of the last 2 epochs equals averaging those epoch files.
    cb = torch.load(run["averaged"], weights_only=True)["state_dict"]
    torch.testing.assert_close(cb[key], avg["state_dict"][key])
    with pytest.raises(ValueError, match="differ in their keys \\('n'"):
        average_state_dicts([a, {"w": a["w"]}])
    # the same keys in another order average; an integer buffer of another shape, or a tensor that is
    # float in one file and integer in another, is refused (it came silently from the last file)
    assert torch.equal(average_state_dicts([{"n": a["n"], "w": a["w"]}, b])["w"], out["w"])
    for odd, says in (({"w": a["w"], "n": torch.tensor([5, 6])}, "'n' has different shapes"),
                      ({"w": torch.tensor([1, 2]), "n": a["n"]}, "'w' is floating point in some")):
        for pair in ([odd, b], [b, odd]):
            with pytest.raises(ValueError, match=says):
                average_state_dicts(pair)
    # Same shapes, another vocabulary (a de->fr run of the same size): refused, not averaged.
    other = torch.load(epochs[-1], weights_only=True)
    assert "tokenizer" in other
    other["tokenizer"] += " "  # any other BPE model
    torch.save(other, tmp_path / "other_vocab.ckpt")
    with pytest.raises(ValueError, match="differ in 'tokenizer'"):
        average_checkpoints([epochs[-2], tmp_path / "other_vocab.ckpt"], tmp_path / "mix.ckpt")
    assert not (tmp_path / "mix.ckpt").exists()


def test_averaging_survives_resume(run, tmp_path):
    # The snapshots travel in the checkpoints: a run resumed after epoch 2 of 3 averages the epochs
    # before the resume too, as the uninterrupted run does (before, only the epochs after it).
    second = sorted((run["root"] / "checkpoints").glob("e*.ckpt"))[1]
    ckpt = torch.load(second, map_location="cpu", weights_only=True)
    snapshots = ckpt["callbacks"]["CheckpointAveraging"]["snapshots"]
    assert len(snapshots) == 2  # epoch 2's own snapshot is in its epoch-end checkpoint
    assert all(torch.equal(snapshots[-1][k], v) for k, v in ckpt["state_dict"].items())
    # Tied weights are stored once per snapshot, as in the state_dict itself.
    ptrs = lambda sd: len({t.untyped_storage().data_ptr() for t in sd.values()})  # noqa: E731
    assert ptrs(snapshots[-1]) == ptrs(ckpt["state_dict"]) < len(ckpt["state_dict"])
    task = TranslationTask(**TINY)
    # last_n=3 here: the 2 saved snapshots + epoch 3. Lightning replays the epoch end of epoch 2 on
    # resume; a second snapshot of it would push epoch 1 out.
    averaging = CheckpointAveraging(last_n=3)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=[averaging])
    trainer.fit(task, _dm(run["cache"]), ckpt_path=str(second), weights_only=True)
    last = {k: v.detach().cpu() for k, v in task.state_dict().items()}
    got = torch.load(averaging.path, map_location="cpu", weights_only=True)["state_dict"]
    expected = average_state_dicts([*snapshots, last])
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-7, msg=k)
    assert any(not torch.equal(got[k], last[k]) for k in last if last[k].is_floating_point())
    # Resumed with a smaller window: the newest snapshots only, and the window holds.
    smaller = CheckpointAveraging(last_n=1)
    smaller.load_state_dict({"snapshots": snapshots})
    assert len(smaller.snapshots) == 1 and smaller.snapshots[0] is snapshots[-1]
    smaller.snapshots.append(last)
    assert list(smaller.snapshots) == [last]


def test_a_fast_dev_run_writes_no_averaged_checkpoint(run, tmp_path):
    """The smoke run's averaged.ckpt made it the newest run of its experiment, which
    --ckpt_path last|best then found without a last.ckpt."""
    averaging = CheckpointAveraging(last_n=2)
    trainer = pl.Trainer(fast_dev_run=True, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[averaging])
    trainer.fit(TranslationTask(**TINY), _dm(run["cache"]))
    assert averaging.path is None and not list(tmp_path.rglob("*.ckpt"))


def test_average_snapshots_of_a_checkpoint(run, tmp_path, capsys):
    # The last epoch's checkpoint keeps the snapshots of epochs 2 and 3 (last_n=2): all of them
    # give the callback's averaged.ckpt, the newest one alone gives that epoch's own weights.
    epochs = sorted((run["root"] / "checkpoints").glob("e*.ckpt"))
    final = torch.load(epochs[-1], map_location="cpu", weights_only=True)
    averaged = torch.load(run["averaged"], map_location="cpu", weights_only=True)["state_dict"]
    both = average_snapshots(epochs[-1])
    newest = average_snapshots(epochs[-1], last=1)
    floats = [k for k, v in averaged.items() if v.is_floating_point()]
    assert any(not torch.equal(averaged[k], final["state_dict"][k]) for k in floats)
    for k in floats:
        torch.testing.assert_close(both["state_dict"][k], averaged[k], rtol=0, atol=1e-7, msg=k)
        torch.testing.assert_close(newest["state_dict"][k], final["state_dict"][k], rtol=0, atol=0, msg=k)
    assert "optimizer_states" not in both and "CheckpointAveraging" not in both["callbacks"]
    with pytest.raises(ValueError, match="holds 2 snapshots, fewer than the 3"):
        average_snapshots(epochs[-1], last=3)
    out = tmp_path / "avg1.ckpt"
    assert averaging_main([str(out), "--snapshots", str(epochs[-1]), "--last", "1"]) == 0
    restored = TranslationTask.load_from_checkpoint(out, weights_only=True)
    assert torch.equal(restored.state_dict()[floats[0]], final["state_dict"][floats[0]])
    assert averaging_main([str(out), "--snapshots", str(run["averaged"])]) == 2  # averaged.ckpt keeps none
    assert capsys.readouterr().err.strip().endswith("holds no CheckpointAveraging snapshots")
    # the same through `tx-suite average`, with two checkpoint files
    from tx_suite.cli.main import main as cli_main

    assert cli_main(["average", str(tmp_path / "avg2.ckpt"), str(epochs[-1]), str(epochs[-2])]) == 0
    two = torch.load(tmp_path / "avg2.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    older = torch.load(epochs[-2], map_location="cpu", weights_only=True)["state_dict"]
    k = floats[0]
    torch.testing.assert_close(two[k], (final["state_dict"][k] + older[k]) / 2, rtol=0, atol=1e-7)
    # what average must not overwrite: an input, a training checkpoint (its optimizer state is
    # what a resume needs), nor average a single file (`average a.ckpt b.ckpt` meant as "a and b")
    before = epochs[-1].read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("not to be lost\n")
    capsys.readouterr()
    for args, says in (([str(epochs[-1]), str(epochs[-1]), str(epochs[-2])], "is also an input"),
                       ([str(epochs[-1]), str(epochs[-2])], "is a training checkpoint"),
                       ([str(tmp_path / "new.ckpt"), str(epochs[-2])], "one checkpoint to average"),
                       # a stray file was called "not a valid checkpoint", as if it were an input
                       ([str(notes), str(epochs[-1]), str(epochs[-2])], "notes.txt exists and is not a checkpoint"),
                       # a directory fell through to the rename: IsADirectoryError, exit 1
                       ([str(tmp_path), str(epochs[-1]), str(epochs[-2])], "is a directory: give a file name")):
        assert cli_main(["average", *args]) == 2
        assert says in capsys.readouterr().err
    assert epochs[-1].read_bytes() == before and not (tmp_path / "new.ckpt").exists()
    assert notes.read_text() == "not to be lost\n"
    empty = tmp_path / "empty.ckpt"  # mktemp's placeholder is replaced
    empty.touch()
    assert cli_main(["average", str(empty), str(epochs[-1]), str(epochs[-2])]) == 0 and empty.stat().st_size > 0
    assert cli_main(["average", str(tmp_path / "avg2.ckpt"), str(epochs[-1]), str(epochs[-2])]) == 0  # an average is replaced


def test_translate_keeps_line_count_on_bad_input(run, tmp_path, capsys, monkeypatch):
    model, tok, _ = load_translator(run["averaged"])
    lines = ["Ein Hund rennt über die Wiese.", "", "   ", "Unbekannt: 🤖 中文 ∮ \x07", "Haus " * 400]
    warnings = []
    out = translate_lines(model, tok, lines, beam_size=2, max_src_tokens=50, warn=warnings.append)
    assert len(out) == len(lines) and out[1] == out[2] == "" and out[0] != ""
    assert all("\n" not in o for o in out)
    assert warnings and warnings[0].startswith("line 5:")
    # The truncated source keeps its EOS (the model never saw a source without one).
    import tx_suite.cli.translate as tr
    seen, real = [], tr.greedy_search

    def spy(model, src, mask, **kw):
        seen.append(src[~mask])
        return real(model, src, mask, **kw)

    monkeypatch.setattr(tr, "greedy_search", spy)
    translate_lines(model, tok, lines[4:], beam_size=1, max_src_tokens=50)
    assert len(seen[0]) == 50 and seen[0][-1] == EOS_ID and seen[0][-2] != EOS_ID
    inp = tmp_path / "in.txt"
    inp.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe broken bytes\n")
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-i", str(inp), "-o", str(tmp_path / "out.txt"),
                           "--beam_size", "1", "--max_src_tokens", "50"]) == 0
    assert len((tmp_path / "out.txt").read_text().split("\n")) - 1 == len(lines) + 1
    assert translate_main(["--ckpt_path", str(run["averaged"]), "Ein Mann."]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_translate_puts_each_translation_on_its_own_line_after_length_batching(run, monkeypatch):
    """Sources are decoded in batches sorted by length; each result must go back to its input line."""
    import tx_suite.cli.translate as tr

    model, tok, _ = load_translator(run["averaged"])
    # a decoder that echoes its source: line i's output is then line i's own text
    monkeypatch.setattr(tr, "greedy_search", lambda model, src, mask, **kw: src)
    lines = ["Ein sehr alter Mann sitzt mit seinem kleinen Hund auf einer Bank im Park.", "Hund.", "",
             "Zwei Frauen gehen die Straße entlang.", "Ja."]
    alone = [translate_lines(model, tok, [line], beam_size=1)[0] for line in lines]
    assert alone[0] != alone[1] and alone[2] == ""
    for batch_size in (64, 2):
        assert translate_lines(model, tok, lines, beam_size=1, batch_size=batch_size) == alone


def test_translate_reads_args_file_or_stdin_and_takes_the_command_lines_beam(run, tmp_path, capsys, monkeypatch):
    import io
    import sys

    import tx_suite.cli.translate as tr

    calls = []
    monkeypatch.setattr(tr, "greedy_search", lambda model, src, mask, **kw: calls.append(1) or src)
    monkeypatch.setattr(tr, "beam_search", lambda model, src, mask, beam_size, **kw: calls.append(beam_size) or src)
    ckpt = ["--ckpt_path", str(run["averaged"])]
    inp = tmp_path / "in.txt"
    inp.write_text("Aus der Datei.\nZweite Zeile.\n", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Von stdin.\n".encode())))
    assert translate_main([*ckpt, "--beam_size", "1", "Ein Hund."]) == 0  # arguments; stdin is not read
    assert capsys.readouterr().out.count("\n") == 1 and calls == [1]
    assert translate_main([*ckpt, "--beam_size", "2", "-i", str(inp)]) == 0  # a file
    assert capsys.readouterr().out.count("\n") == 2 and calls == [1, 2]
    assert translate_main([*ckpt, "-i", "-"]) == 0  # '-' is stdin; the checkpoint's beam size
    out = capsys.readouterr().out
    beam = load_translator(run["averaged"])[2].get("beam_size", 5)
    assert out.count("\n") == 1 and "stdin" in out.lower() and calls == [1, 2, beam] and beam != 2
    assert translate_main([*ckpt, "-i", str(inp), "Ein Hund."]) == 2
    assert "give sentences or --input, not both" in capsys.readouterr().err and len(calls) == 3


def test_translate_truncates_only_sources_longer_than_max_src_tokens(run):
    from tx_suite.data.translation_dataset import encode_source

    model, tok, _ = load_translator(run["averaged"])
    line = "Ein Mann mit einem roten Hut steht vor dem Haus."
    n = len(encode_source(tok, [line])[0])  # with its EOS
    warnings = []
    translate_lines(model, tok, [line], beam_size=1, max_src_tokens=n, warn=warnings.append)
    assert warnings == []  # exactly the limit: kept whole
    translate_lines(model, tok, [line], beam_size=1, max_src_tokens=n - 1, warn=warnings.append)
    assert warnings == [f"line 1: {n} tokens, truncated to {n - 1}"]


def test_translate_interrupted_leaves_outputs_as_they_were(run, tmp_path, monkeypatch):
    """The writability probe used to create an empty -o file that an interrupted run left behind."""
    import tx_suite.cli.translate as translate_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(translate_cli, "translate_lines", interrupted)
    new, old = tmp_path / "new.txt", tmp_path / "old.txt"
    old.write_text("an earlier translation\n")
    for out in (new, old):
        with pytest.raises(KeyboardInterrupt):
            translate_main(["--ckpt_path", str(run["averaged"]), "-o", str(out), "Ein Hund."])
    assert not new.exists() and old.read_text() == "an earlier translation\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]  # no stray temporary file


def test_attention_map_sentences_are_read_as_translate_reads_them():
    """Given sentences were encoded as typed: for a lowercase model "Ein Mann" became byte tokens
    (<0x45>, 'in', ...) where translate feeds it "ein mann"; a tab or BOM reached the model too."""
    from types import SimpleNamespace

    maps = TranslationAttentionMaps(sentences=["\ufeffEin Mann\tschläft."])
    lower = SimpleNamespace(datamodule=SimpleNamespace(hparams={"lowercase": True}))
    cased = SimpleNamespace(datamodule=SimpleNamespace(hparams={"lowercase": False}))
    assert maps._sources(lower) == ["ein mann schläft."]
    assert maps._sources(cased) == ["Ein Mann schläft."]


def test_translate_ckpt_path_best_or_last_of_an_experiment(tmp_path):
    from tx_suite.cli.translate import TranslateError, _resolve_checkpoint

    for name in ("best", "last"):
        path = tmp_path / "exp" / "r1" / "checkpoints" / f"{name}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for which in ("best", "last"):
        want = str(tmp_path / "exp" / "r1" / "checkpoints" / f"{which}.ckpt")
        assert _resolve_checkpoint(which, "exp", str(tmp_path)) == want
        assert _resolve_checkpoint(f"exp:{which}", None, str(tmp_path)) == want
        with pytest.raises(TranslateError, match=f"needs --experiment"):
            _resolve_checkpoint(which, None, str(tmp_path))


def test_translate_errors_are_one_line(run, tmp_path, capsys, monkeypatch):
    nested = tmp_path / "new" / "dir" / "out.txt"  # made for the output
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-o", str(nested), "Ein Hund."]) == 0
    assert nested.read_text().count("\n") == 1
    (tmp_path / "file").write_text("")
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-o", str(tmp_path / "file" / "out.txt"), "x"]) == 2
    assert "cannot write" in capsys.readouterr().err
    # a directory as output failed only after translating everything, with exit status 1
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-o", str(tmp_path), "x"]) == 2
    assert "cannot write" in capsys.readouterr().err
    # options that leave no output budget, or no length penalty, gave empty lines and exit 0
    for bad_options in (["--max_len_b", "-20"], ["--max_len_a", "0", "--max_len_b", "1"],
                        ["--length_penalty", "nan"], ["--max_len_a", "inf"], ["--max_len_a", "-1"]):
        assert translate_main(["--ckpt_path", str(run["averaged"]), *bad_options, "x"]) == 2, bad_options
        err = capsys.readouterr().err
        assert "error: --" in err and len(err.strip().splitlines()) == 1, err
    # the shortest source is a token and its EOS: a = 0.5, b = 1 leaves it room for one word
    assert translate_main(["--ckpt_path", str(run["averaged"]), "--max_len_a", "0.5", "--max_len_b", "1", "x"]) == 0
    capsys.readouterr()
    for device, message in (("gpu7", "is not a torch device"), ("cuda:99", "--device cuda:99 but")):
        assert translate_main(["--ckpt_path", str(run["averaged"]), "--device", device, "x"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert translate_main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert translate_main(["--ckpt_path", str(bad), "x"]) == 2
    err = capsys.readouterr().err
    assert "not a valid checkpoint" in err and len(err.strip().splitlines()) == 1
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert translate_main(["--ckpt_path", str(tmp_path / "other.ckpt"), "x"]) == 2
    assert "not a translation checkpoint" in capsys.readouterr().err
    # torch's size-mismatch message spans lines; a damaged tokenizer raised a bare Exception, exit 1
    wide = torch.load(run["averaged"], weights_only=True)
    wide["hyper_parameters"]["d_ff"] = 96
    torch.save(wide, tmp_path / "wide.ckpt")
    broken = torch.load(run["averaged"], weights_only=True)
    broken["tokenizer"] = broken["tokenizer"][:40]
    torch.save(broken, tmp_path / "broken.ckpt")
    for name, message in (("wide", "weights do not match the stored hyper-parameters"),
                          ("broken", "its stored BPE tokenizer cannot be read")):
        assert translate_main(["--ckpt_path", str(tmp_path / f"{name}.ckpt"), "x"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a budget past int64 wrapped around to an empty line; now it is capped and decodes. The cap is
    # lowered because this barely trained model rarely emits EOS: 65536 steps took a minute of CI.
    monkeypatch.setattr("tx_suite.decoding.greedy.MAX_BUDGET", 40)
    assert translate_main(["--ckpt_path", str(run["averaged"]), "--max_len_a", "1e300", "Ein Hund."]) == 0
    out = capsys.readouterr().out.strip()
    assert out and len(out.split()) < 40
    monkeypatch.undo()
    bare = torch.load(run["averaged"], weights_only=True)
    del bare["hyper_parameters"]
    torch.save(bare, tmp_path / "bare.ckpt")  # raised TypeError "missing ... 'vocab_size'", exit 1
    assert translate_main(["--ckpt_path", str(tmp_path / "bare.ckpt"), "x"]) == 2
    assert "has no model hyper-parameters" in capsys.readouterr().err


@pytest.mark.parametrize("setting", [dict(val_beam_size=0), dict(beam_size=-1), dict(max_len_a=-0.5),
                                     dict(max_len_b=float("inf")), dict(length_penalty=float("nan")),
                                     dict(bleu_every_n_epochs=0), dict(n_samples=-1)])
def test_bad_decoding_settings_are_refused_before_training(setting):
    """A beam size of 0 failed only at the first decoding validation, after a whole epoch."""
    (name, value), = setting.items()
    with pytest.raises(ValueError, match=rf"^model\.{name} must be a finite number.*, got {value}$"):
        TranslationTask(**{**TINY, **setting})


def test_mismatched_datamodule_is_refused(run, tmp_path):
    dm = Multi30kDataModule(train_limit=500, vocab_size=700, cache_dir=str(run["cache"]))
    task = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="BPE model of the datamodule differs"):
        trainer.test(task, dm, ckpt_path=str(run["averaged"]), weights_only=True)


def test_reversed_language_pair_is_refused(run, tmp_path):
    # The joint BPE of en->de equals de->en's, so only the stored data settings can tell.
    dm = Multi30kDataModule(src_lang="en", tgt_lang="de", train_limit=600, vocab_size=800, max_tokens=1024,
                            max_len=64, cache_dir=str(run["cache"]))
    task = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="data.src_lang='de', the datamodule has 'en'"):
        trainer.test(task, dm, ckpt_path=str(run["averaged"]), weights_only=True)
    with pytest.raises(ValueError, match="data.src_lang='de', the datamodule has 'en'"):
        trainer.test(task, dm)  # the weights of load_from_checkpoint, no ckpt_path


def test_validate_scores_bleu_whatever_bleu_every_n_epochs(run, tmp_path):
    task = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True, bleu_every_n_epochs=10)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         default_root_dir=tmp_path)
    metrics = trainer.validate(task, _dm(run["cache"]))[0]
    assert {"val/bleu", "val/chrf", "val/bleu_lc"} <= set(metrics)


def test_sdpa_backend_reaches_loss_and_decoding(run, monkeypatch):
    """``sdpa_backend`` pins the kernel of the loss and of beam search, the math kernel reproduces
    the default's numbers, and a CUDA-only kernel of a GPU-trained checkpoint ("efficient") is
    not pinned on a CPU: one warning, the default's numbers."""
    with pytest.raises(ValueError, match="sdpa_backend"):
        TranslationTask(**TINY, sdpa_backend="fastest")
    task = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True).eval()
    dm = _dm(run["cache"])
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))

    def loss_and_ids(backend):
        task.hparams.sdpa_backend = backend
        with torch.no_grad():
            return task._loss(batch)[0], task.generate(batch["src"], batch["src_key_padding_mask"], beam_size=3)

    ref_loss, ref_ids = loss_and_ids(None)
    loss, ids = loss_and_ids("math")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert torch.equal(ids, ref_ids)
    import torch.nn.attention as attention

    pinned = []
    real_sdpa_kernel = attention.sdpa_kernel
    monkeypatch.setattr(attention, "sdpa_kernel", lambda b: pinned.append(list(b)) or real_sdpa_kernel(b))
    loss_and_ids("math")
    assert len(pinned) == 2 and all(b == [attention.SDPBackend.MATH] for b in pinned)  # loss, search
    pinned.clear()
    monkeypatch.setattr("tx_suite.tasks.sdpa_backend._warned", set(), raising=False)  # warned once per process
    with pytest.warns(UserWarning, match="sdpa_backend='efficient' has no cpu kernel"):
        loss, ids = loss_and_ids("efficient")
    assert pinned == []
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert torch.equal(ids, ref_ids)


def test_bleu_every_n_epochs_with_bleu_monitor(tmp_path):
    """BLEU every 2nd epoch and in the last one, here ended by max_steps; the checkpoint that
    monitors val/bleu must not fail in epochs without it (Lightning's ModelCheckpoint raises), and
    the sample translations are logged only in epochs that decoded them (not again, stale)."""
    from tx_suite.tasks.callbacks.run_checkpoint import RunCheckpoint

    class Seen(pl.Callback):
        def __init__(self):
            self.bleu_epochs = []

        def on_validation_end(self, trainer, pl_module):
            # callback_metrics keeps the last val/bleu through epochs that do not decode: ask the task.
            if not trainer.sanity_checking and pl_module._decode_now("val"):
                self.bleu_epochs.append(trainer.current_epoch)

    pl.seed_everything(0)
    ck = RunCheckpoint(dirpath=tmp_path / "checkpoints", filename="best", monitor="val/bleu", mode="max",
                       save_last=True, save_top_k=1, enable_version_counter=False)
    seen = Seen()
    trainer = pl.Trainer(max_epochs=10, max_steps=20, limit_train_batches=4, limit_val_batches=1,
                         num_sanity_val_steps=0, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ck, seen, TranslationSamples(n=2)])
    with pytest.warns(UserWarning, match="val/bleu"):
        trainer.fit(TranslationTask(**TINY, bleu_every_n_epochs=2), _dm(tmp_path / "cache"))
    assert seen.bleu_epochs == [1, 3, 4]  # epoch 4 (0-based) is the last: max_steps ends it
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] in (8, 16, 20)
    rows = (tmp_path / "val_samples.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == [1, 1, 3, 3, 4, 4]


def test_translate_normalizes_invisible_and_unusual_whitespace(run):
    """A byte-order mark, a tab, a no-break space, a zero-width space or a decomposed umlaut would
    otherwise reach the encoder as byte tokens it never saw in training."""
    from tx_suite.data.text_normalize import normalize_source
    from tx_suite.data.translation_dataset import encode_source

    model, tok, _ = load_translator(run["averaged"])
    clean = "Ein Mann über dem Haus."
    variants = ["\ufeff" + clean, "Ein\tMann über  dem Haus.", "Ein\u00a0Mann über\u200b dem Haus. ",
                unicodedata.normalize("NFD", clean)]
    assert all(normalize_source(v) == clean for v in variants) and normalize_source(" \ufeff\t") == ""
    # control characters and bidi marks changed the translation ("Ein paar Taucher spielen.")
    for dirty in ("\x00Ein Mann über dem Haus.\x07", "\u202eEin Mann \u200eüber dem Haus.\u2069"):
        assert normalize_source(dirty) == clean
    raw = [encode_source(tok, [v])[0].tolist() for v in variants]
    assert all(r != encode_source(tok, [clean])[0].tolist() for r in raw)  # what the model got before
    outs = translate_lines(model, tok, [clean, *variants, "\ufeff"], beam_size=2)
    assert outs[1:-1] == [outs[0]] * len(variants) and outs[-1] == ""


def test_a_decoded_line_break_cannot_split_a_translation(run, tmp_path, monkeypatch):
    # byte fallback can decode to "\n" or "\r": the output file must keep one line per input line
    from tx_suite.data.bpe import BPETokenizer

    real = BPETokenizer.decode_batch

    def with_breaks(self, ids):
        return [f"{h}\nnext\rline" for h in real(self, ids)]

    monkeypatch.setattr(BPETokenizer, "decode_batch", with_breaks)
    inp = tmp_path / "in.txt"
    inp.write_text("Ein Hund.\nZwei Männer.\n\nEine Frau.\n", encoding="utf-8")
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-i", str(inp), "-o", str(tmp_path / "out.txt"),
                           "--beam_size", "1"]) == 0
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert len(out) == 5 and out[-1] == "" and out[2] == ""
    assert all(o.endswith(" next line") for o in (out[0], out[1], out[3])), out


def test_translate_progress_bar_only_on_a_terminal(run, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model, tok, _ = load_translator(run["averaged"])
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        translate_lines(model, tok, ["Ein Hund.", "Zwei Männer."], beam_size=1, progress=True)
        assert ("0/2 [" in stream.getvalue()) is shown, stream.getvalue()  # drawn at the start


def test_translate_lowercases_input_for_a_model_trained_on_lowercased_text(run, tmp_path, capsys):
    ckpt = torch.load(run["averaged"], map_location="cpu", weights_only=True)
    assert load_translator(run["averaged"])[2]["lowercase"] is False
    ckpt.setdefault("datamodule_hyper_parameters", {})["lowercase"] = True  # as Multi30kDataModule(lowercase=True)
    torch.save(ckpt, tmp_path / "lc.ckpt")
    assert load_translator(tmp_path / "lc.ckpt")[2]["lowercase"] is True
    outs = []
    for text in ("Ein Hund rennt über die Wiese.", "ein hund rennt über die wiese."):
        assert translate_main(["--ckpt_path", str(tmp_path / "lc.ckpt"), "--beam_size", "2", text]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()


def test_attention_maps_go_to_wandb_one_sentence_per_key(run, tmp_path, monkeypatch):
    """Figure sizes follow sentence lengths: several sentences under one W&B key were shown
    distorted (W&B warned 'Images sizes do not match' every epoch)."""
    from pytorch_lightning.loggers import WandbLogger

    logged = []
    monkeypatch.setattr(WandbLogger, "log_image",
                        lambda self, key, images, step=None, **kw: logged.append((key, {im.size for im in images})))
    callback = TranslationAttentionMaps(n_sentences=2)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                         default_root_dir=tmp_path,
                         logger=WandbLogger(save_dir=str(tmp_path), mode="disabled"), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=[callback])
    trainer.fit(TranslationTask(**TINY), _dm(run["cache"]))
    keys = [key for key, _ in logged]
    assert sorted(keys) == sorted(f"val/attention/{kind}_layer0/s{i}" for kind in ("encoder_self", "cross") for i in (0, 1))
    assert all(len(sizes) == 1 for _, sizes in logged)


def test_tokens_per_s_leaves_out_the_validation_between_epochs(tmp_path):
    import csv
    import time

    class SlowValidation(pl.Callback):  # stands in for a long validation decode
        def on_validation_epoch_end(self, trainer, pl_module):
            time.sleep(3.0)

    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
                         log_every_n_steps=1, logger=pl.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=[SlowValidation()])
    trainer.fit(TranslationTask(**TINY, bleu_every_n_epochs=100), _dm(tmp_path / "cache"))
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rates = [float(r["train/tokens_per_s"]) for r in csv.DictReader(f) if r.get("train/tokens_per_s")]
    # Every batch is measured (the last of an epoch too), and none takes the 3 s of validation: a
    # batch holds at most 2 x 1024 real tokens (max_tokens counts the longer side), so a rate that
    # included the sleep is below 2048 / 3 tok/s; a step would have to take 2.5 s to fall below
    # this bound (a 1-layer step takes < 0.3 s even on a busy core). A ratio of the fastest to the
    # slowest step came within 2x of its limit on a loaded machine.
    assert len(rates) == 6 and min(rates) > 2 * 1024 / 2.5, rates


def test_label_smoothing_and_weight_decay_reach_the_loss_and_optimizer(run):
    from types import SimpleNamespace

    from tx_suite.tasks.translation_loss import label_smoothed_nll_loss

    state = TranslationTask.load_from_checkpoint(run["averaged"], weights_only=True).state_dict()
    dm = _dm(run["cache"])
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    losses = {}
    for eps in (0.0, 0.1):
        task = TranslationTask(**TINY, label_smoothing=eps).eval()
        task.load_state_dict(state)
        with torch.no_grad():
            loss_sum, nll_sum, n = task._loss(batch)
            keep = batch["tgt_out"] != 0
            h = task.model.forward_features(batch["src"], batch["tgt_in"], batch["src_key_padding_mask"])
            ref = label_smoothed_nll_loss(task.model.lm_head(h[keep]), batch["tgt_out"][keep], eps)
        torch.testing.assert_close(loss_sum, ref[0])
        losses[eps] = (float(loss_sum), float(nll_sum))
    assert losses[0.0][0] == pytest.approx(losses[0.0][1]) and losses[0.1][0] > losses[0.1][1] * 1.01
    # weight decay > 0 is decoupled (AdamW, Loshchilov & Hutter 2019), not Adam's L2 term
    for wd, cls in ((0.0, torch.optim.Adam), (0.01, torch.optim.AdamW)):
        task = TranslationTask(**TINY, weight_decay=wd)
        task.trainer = SimpleNamespace(estimated_stepping_batches=100)  # all configure_optimizers reads
        opt = task.configure_optimizers()["optimizer"]
        assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == wd


def test_an_epoch_cut_short_then_resumed_is_averaged_at_its_real_end(run, tmp_path):
    # max_steps=6 stops 2 batches into epoch 1 (4 batches an epoch), and the checkpoint written at
    # that stop (as ModelCheckpoint's last.ckpt is) holds a snapshot of the cut epoch. Resumed with
    # max_steps=8, epoch 1 ends at step 8: its snapshot must be the step-8 weights, not step 6's.
    class SaveAtStop(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.global_step == 6:
                trainer.save_checkpoint(tmp_path / "cut.ckpt")

    def fit(max_steps, ckpt=None):
        averaging = CheckpointAveraging(last_n=2)
        trainer = pl.Trainer(max_steps=max_steps, limit_train_batches=4, limit_val_batches=0, num_sanity_val_steps=0,
                             default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, callbacks=[averaging, SaveAtStop()])
        task = TranslationTask(**TINY)
        trainer.fit(task, _dm(run["cache"]), ckpt_path=ckpt, weights_only=True)
        return trainer, task, averaging

    fit(6)
    saved = torch.load(tmp_path / "cut.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["callbacks"]["CheckpointAveraging"]["snapshots"]) == 2
    trainer, task, averaging = fit(8, str(tmp_path / "cut.ckpt"))
    assert trainer.global_step == 8 and len(averaging.snapshots) == 2
    final = {k: v.detach().cpu() for k, v in task.state_dict().items()}
    assert all(torch.equal(averaging.snapshots[-1][k], v) for k, v in final.items())


def test_averaging_accumulates_in_float64():
    # In float32, 2**24 + 1 rounds back to 2**24: the mean of (2**24, 1, 1) would lose both ones.
    sds = [{"w": torch.tensor([2.0**24])}, {"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0])}]
    assert average_state_dicts(sds)["w"].item() == (2**24 + 2) / 3  # 5592406, exact in float32


def test_eval_scores_are_token_weighted_and_rows_in_corpus_order():
    """val/loss and val/nll are sums over the split divided by its target tokens (not a mean of
    batch means), ppl = exp(nll), and the decoded rows are kept in corpus order."""
    task = TranslationTask(**TINY)
    task.log = lambda *args, **kwargs: None
    rows = [{"index": i, "source": f"s{i}", "reference": "a b", "hypothesis": "a b"} for i in (2, 0, 1)]
    task._eval = {"batches": [((0, 1), 10.0, 8.0, 4), ((2,), 1.0, 0.5, 1)], "rows": rows, "decode_s": 1.0}
    out = task._eval_end("val")
    assert out["loss"] == pytest.approx(11.0 / 5) and out["nll"] == pytest.approx(8.5 / 5)
    assert out["ppl"] == pytest.approx(math.exp(8.5 / 5))
    assert [r["index"] for r in task.val_samples] == [0, 1, 2]


def test_training_step_and_eval_beams_follow_the_settings(run):
    """The training loss is per target token; validation decodes with val_beam_size, test with
    beam_size; Adam's betas and a per-step schedule reach the optimizer."""
    from types import SimpleNamespace

    task = TranslationTask(**TINY, val_beam_size=1).eval()  # beam_size=3; eval: no dropout
    task.log = lambda *args, **kwargs: None
    dm = _dm(run["cache"])
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    loss_sum, _, n = task._loss(batch)
    torch.testing.assert_close(task.training_step(batch, 0), loss_sum / n)
    beams = []
    task.translate = lambda b, beam_size=None: beams.append(beam_size) or [""] * len(b["src"])
    task.trainer = SimpleNamespace(state=SimpleNamespace(fn="validate"), estimated_stepping_batches=100)
    task._eval_start()
    with torch.no_grad():  # as Lightning runs evaluation
        task._eval_step(batch, "val")
        task._eval_step(batch, "test")
    assert beams == [1, 3]
    conf = task.configure_optimizers()
    assert conf["optimizer"].param_groups[0]["betas"] == (0.9, 0.98)
    assert conf["lr_scheduler"]["interval"] == "step"


def test_generate_passes_its_decoding_settings(monkeypatch):
    import tx_suite.tasks.translation as translation

    calls = []
    monkeypatch.setattr(translation, "beam_search", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(translation, "greedy_search", lambda *a, **kw: calls.append(dict(kw, greedy=True)))
    task = TranslationTask(**TINY, length_penalty=0.6, max_len_a=0.5, max_len_b=3)  # beam_size=3
    src = torch.tensor([[5, EOS_ID]])
    mask = torch.zeros_like(src, dtype=torch.bool)
    task.generate(src, mask)
    task.generate(src, mask, length_penalty=2.0)
    task.generate(src, mask, beam_size=1)
    assert [(c["beam_size"], c["length_penalty"]) for c in calls[:2]] == [(3, 0.6), (3, 2.0)]
    assert calls[2]["greedy"] and (calls[2]["max_len_a"], calls[2]["max_len_b"]) == (0.5, 3)


def _fake_trainer(tmp_path, loggers=(), epoch=4, global_step=21):
    from types import SimpleNamespace

    return SimpleNamespace(sanity_checking=False, should_stop=False, is_global_zero=True, current_epoch=epoch,
                           global_step=global_step,
                           loggers=list(loggers), default_root_dir=str(tmp_path), state=SimpleNamespace(fn="fit"),
                           max_epochs=None, max_steps=-1,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=global_step - 1)))


def test_translation_samples_rows_keep_their_columns(tmp_path, monkeypatch):
    """The first n validation rows, as (source, reference, hypothesis) in the TSV and the W&B
    table, the table at the step of the validation metrics."""
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger

    tables = []
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns=None, data=None, step=None, **kw:
                        tables.append((key, columns, data, step)))
    rows = [{"index": i, "source": f"Quelle {i}", "reference": f"reference {i}", "hypothesis": f"hypo\t{i}"}
            for i in range(3)]
    trainer = _fake_trainer(tmp_path, [WandbLogger(save_dir=str(tmp_path), mode="disabled")])
    # the sanity check's samples (an untrained model, epoch 0 again) are not rows of the run,
    # nor are another rank's (rank 0 writes the file)
    for flag, value in (("sanity_checking", True), ("is_global_zero", False)):
        setattr(trainer, flag, value)
        TranslationSamples(n=2).on_validation_end(trainer, SimpleNamespace(val_samples=rows))
        setattr(trainer, flag, not value)
    assert not (tmp_path / "val_samples.tsv").exists() and tables == []
    TranslationSamples(n=2).on_validation_end(trainer, SimpleNamespace(val_samples=rows))
    lines = (tmp_path / "val_samples.tsv").read_text(encoding="utf-8").splitlines()
    fields = [line.split("\t") for line in lines[1:]]
    assert [f[:1] + f[2:] for f in fields] == [["4", "Quelle 0", "reference 0", "hypo 0"],
                                               ["4", "Quelle 1", "reference 1", "hypo 1"]]
    assert all(f[1] == "20" for f in fields)  # the step of the validation metrics, as in the W&B table
    assert tables == [("val/samples", ["epoch", "source", "reference", "hypothesis"],
                       [[4, "Quelle 0", "reference 0", "hypo\t0"], [4, "Quelle 1", "reference 1", "hypo\t1"]], 20)]


def test_attention_maps_draw_the_asked_layers_with_query_rows_and_key_columns(tmp_path, monkeypatch):
    """layers=[-1, 0] on a 3-layer encoder and 2-layer decoder: encoder self-attention of layers
    2 and 0 (source x source), cross-attention of layers 1 and 0 (target rows x source columns)."""
    from types import SimpleNamespace

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tx_suite.tasks.callbacks.translation_attention as ta

    drawn, plot_heads = [], ta.plot_heads

    def plot(weights, rows, cols, title):
        drawn.append((weights, rows, cols, title))
        return plt.figure()
    monkeypatch.setattr(ta, "plot_heads", plot)
    maps = {f"transformer.encoder.layers.{i}.self_attn": torch.full((2, 3, 3), float(i)) for i in range(3)}
    maps |= {f"transformer.decoder.layers.{i}.cross_attn": torch.full((2, 4, 3), 10.0 + i) for i in range(2)}
    callback = TranslationAttentionMaps(sentences=["x"], layers=[-1, 0])
    callback.attention_maps = lambda module, sources: [{"src": ["a", "b", "c"], "tgt": ["A", "B", "C", "D"],
                                                        "maps": maps}]
    model = SimpleNamespace(transformer=SimpleNamespace(encoder=SimpleNamespace(layers=[0, 1, 2]),
                                                        decoder=SimpleNamespace(layers=[0, 1])))
    callback.on_validation_end(_fake_trainer(tmp_path), SimpleNamespace(model=model))
    got = [(float(w.flatten()[0]), r, c) for w, r, c, _ in drawn]
    src, tgt = ["a", "b", "c"], ["A", "B", "C", "D"]
    assert got == [(2.0, src, src), (11.0, tgt, src), (0.0, src, src), (10.0, tgt, src)]
    assert [p.rsplit("/", 1)[1] for p in callback.saved] == [
        "epoch004_encoder_self_layer2_s0.png", "epoch004_cross_layer1_s0.png",
        "epoch004_encoder_self_layer0_s0.png", "epoch004_cross_layer0_s0.png"]
    # a fit validating every 50 of its 200 batches an epoch: the step keeps the four validations apart
    callback.saved.clear()
    several = _fake_trainer(tmp_path)
    several.val_check_batch, several.num_training_batches = 50, 200
    callback.on_validation_end(several, SimpleNamespace(model=model))
    assert callback.saved[0].rsplit("/", 1)[1] == "epoch004_step000021_encoder_self_layer2_s0.png"
    # plot_heads: head i's panel shows weights[i] with queries as rows and keys as columns
    weights = torch.rand(2, 3, 5)
    fig = plot_heads(weights, ["q0", "q1", "q2"], list("abcde"), "t")
    ax = fig.axes[1]
    assert torch.equal(torch.as_tensor(ax.images[0].get_array().data), weights[1])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q0", "q1", "q2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    plt.close("all")


def test_attention_maps_refuse_a_layer_the_model_lacks_before_training(tmp_path):
    """layers=[5] on 3 encoder / 2 decoder layers: an error naming the range, not layer 5 % 3."""
    from types import SimpleNamespace

    model = SimpleNamespace(transformer=SimpleNamespace(encoder=SimpleNamespace(layers=[0, 1, 2]),
                                                        decoder=SimpleNamespace(layers=[0, 1])))
    module = SimpleNamespace(model=model)
    TranslationAttentionMaps(layers=[-2, 1]).setup(None, module, "fit")  # in range for both stacks
    for layers, stack, allowed in (([5], "3-layer encoder", "-3..2"), ([2], "2-layer decoder", "-2..1"),
                                   ([-3], "2-layer decoder", "-2..1")):
        with pytest.raises(ValueError, match=f"layer {layers[0]} does not exist in the {stack} \\(use {allowed}\\)"):
            TranslationAttentionMaps(layers=layers).setup(None, module, "fit")
    callback = TranslationAttentionMaps(sentences=["x"], layers=[3])
    callback.attention_maps = lambda module, sources: [{"src": ["a"], "tgt": ["A"], "maps": {}}]
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        callback.on_validation_end(_fake_trainer(tmp_path), module)


def test_attention_map_rows_are_the_queries_that_predicted_each_output_token(run):
    """Row i of the cross-attention map is the decoder position that predicted output token i:
    row 0 is the BOS query's attention, whatever follows."""
    from tx_suite.core import record_attention
    from tx_suite.data.bpe import BOS_ID
    from tx_suite.data.translation_dataset import encode_source, pad_batch

    task = run["task"]
    text = "Ein Mann fährt Fahrrad."
    result = TranslationAttentionMaps().attention_maps(task, [text])[0]
    cross = result["maps"]["transformer.decoder.layers.0.cross_attn"]
    assert cross.shape == (TINY["n_heads"], len(result["tgt"]), len(result["src"]))
    src_ids, src_mask = pad_batch(encode_source(task.tokenizer, [text], 30))
    task.model.eval()
    with torch.no_grad(), record_attention(task.model) as maps:
        task.model(src_ids, torch.tensor([[BOS_ID]]), src_mask)
    torch.testing.assert_close(cross[:, 0], maps["transformer.decoder.layers.0.cross_attn"][0, :, 0])


def test_normalize_source_keeps_what_nfc_keeps_and_split_lines_keeps_line_numbers():
    """NFC, not NFKC: ligatures, superscripts, fractions, full-width letters and typographic
    punctuation are text the user wrote; only invisible format characters go (soft hyphen)."""
    from tx_suite.data.text_normalize import normalize_source, split_lines

    kept = "„Ein ﬁx² ½ Ｔ“ – «Hallo»… ¿qué? l'été"
    assert normalize_source(kept) == kept
    assert normalize_source("Haus\u00adtür") == "Haustür"
    # an invisible character between a letter and its combining accent must not block composition
    for joiner in ("\u200b", "\u00ad", "\u200d"):
        assert normalize_source(f"Caf{'e'}{joiner}\u0301") == "Café"
    assert split_lines(b"a\r\nb\n") == ["a", "b"] and split_lines(b"a\n\n") == ["a", ""]
    assert split_lines(b"") == [] and split_lines(b"\n") == [""] and split_lines(b"a") == ["a"]
    assert split_lines("a\x0cb\u2028c\nd".encode()) == ["a\x0cb\u2028c", "d"]


def test_attention_maps_default_to_the_first_validation_sources(run):
    from types import SimpleNamespace

    from tx_suite.data.multi30k import read_pair

    dm = _dm(run["cache"])
    dm.setup("validate")
    de, _ = read_pair("val", "de", "en")
    trainer = SimpleNamespace(datamodule=dm)
    assert TranslationAttentionMaps(n_sentences=2)._sources(trainer) == de[:2]
    assert TranslationAttentionMaps(sentences=["Ein Hund."])._sources(trainer) == ["Ein Hund."]


def test_average_names_both_kinds_of_checkpoint():
    from tx_suite.tasks.callbacks.translation_averaging import _check_same_model

    with pytest.raises(ValueError, match=r"^a.ckpt is a TranslationTask checkpoint and b.ckpt a checkpoint that "
                                         r"names no task class: average checkpoints of one model$"):
        _check_same_model([{"hyper_parameters": {"_class_path": "tx_suite.tasks.translation.TranslationTask"}}, {}],
                          ["a.ckpt", "b.ckpt"])


def test_data_parallel_gradients_are_normalised_by_the_global_token_count(run):
    """Two ranks with batches of different token counts: the average of their gradients (what DDP
    applies) must be the gradient of the summed loss / all tokens, as one process on both batches
    computes it. Each rank used its own per-token mean, so the shorter batch's tokens counted more."""
    import types

    dm = _dm(run["cache"])
    dm.setup("fit")
    batches = list(itertools.islice(iter(dm.train_dataloader()), 8))
    counts = [int((b["tgt_out"] != 0).sum()) for b in batches]
    a, b = batches[counts.index(max(counts))], batches[counts.index(min(counts))]
    assert max(counts) > 1.3 * min(counts)  # unequal enough for the test to mean something
    torch.manual_seed(0)
    task = TranslationTask(**{**TINY, "dropout": 0.0})
    task.log = lambda *args, **kwargs: None
    n_total = sum(int((x["tgt_out"] != 0).sum()) for x in (a, b))

    def grads(batch, world):
        task.zero_grad()
        fake = types.SimpleNamespace(world_size=world, strategy=types.SimpleNamespace(
            reduce=lambda t, reduce_op: torch.tensor(float(n_total)) if world > 1 else t))
        task._trainer = fake
        try:
            task.training_step(batch, 0).backward()
        finally:
            task._trainer = None
        return [p.grad.clone() for p in task.parameters() if p.grad is not None]

    ddp = [(ga + gb) / 2 for ga, gb in zip(grads(a, 2), grads(b, 2))]  # DDP's all-reduce mean
    task.zero_grad()
    sums = [task._loss(x) for x in (a, b)]
    ((sums[0][0] + sums[1][0]) / n_total).backward()
    single = [p.grad.clone() for p in task.parameters() if p.grad is not None]
    for g_ddp, g_one in zip(ddp, single):
        torch.testing.assert_close(g_ddp, g_one, rtol=1e-4, atol=1e-7)


def test_activation_dropout_reaches_the_model_and_the_translate_command(run, tmp_path):
    """The fairseq recipes' ``activation_dropout`` (0 there) must survive config -> task -> checkpoint
    -> ``translate``; an older checkpoint without it keeps one rate for both (None)."""
    layer = TranslationTask(**TINY, dropout=0.3, activation_dropout=0.0).model.transformer.encoder.layers[0]
    assert (layer.dropout.p, layer.ffn.dropout.p) == (0.3, 0.0)
    ckpt = torch.load(run["averaged"], map_location="cpu", weights_only=True)
    assert "activation_dropout" in ckpt["hyper_parameters"]
    old = {**ckpt, "hyper_parameters": {k: v for k, v in ckpt["hyper_parameters"].items()
                                        if k != "activation_dropout"}}
    for hp, expected in (({"dropout": 0.3, "activation_dropout": 0.0}, 0.0), ({"dropout": 0.3}, 0.3)):
        path = tmp_path / "c.ckpt"
        torch.save({**old, "hyper_parameters": {**old["hyper_parameters"], **hp}}, path)
        model = load_translator(path)[0]
        assert model.transformer.decoder.layers[0].ffn.dropout.p == expected


def test_a_run_bounded_by_max_time_alone_trains_with_inverse_sqrt_and_cosine_asks_for_a_length(run, tmp_path):
    """max_epochs -1 (stop on max_time only): Lightning's step estimate is infinite, and int() of it
    stopped every task at configure_optimizers with a bare OverflowError. inverse_sqrt never needs
    the total; a cosine schedule cannot decay over an unknown length and says so."""
    def fit(**hp):
        trainer = pl.Trainer(max_epochs=-1, max_time={"seconds": 3}, limit_val_batches=0, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(TranslationTask(**{**TINY, **hp}), _dm(run["cache"]))
        return trainer

    assert fit().global_step > 0
    with pytest.raises(ValueError, match="cosine learning-rate schedule .* has no length"):
        fit(lr_schedule="cosine")


def test_translate_reads_utf16_files_and_notes_undecodable_bytes(run, tmp_path, capsys):
    """A UTF-16 file (Windows Notepad's "Unicode") was read as UTF-8: umlauts lost, NULs dropped
    silently, and its final newline added an output line. Latin-1 bytes are still read (as U+FFFD),
    now with a note."""
    text = "Ein Mädchen läuft.\r\nZwei Hunde spielen.\r\n"
    outs = {}
    for name, data in (("utf8", text.encode()), ("utf16", text.encode("utf-16")),
                       ("utf16be", codecs.BOM_UTF16_BE + text.encode("utf-16-be"))):
        (tmp_path / name).write_bytes(data)
        assert translate_main(["--ckpt_path", str(run["averaged"]), "-i", str(tmp_path / name), "-o",
                               str(tmp_path / f"{name}.out"), "--beam_size", "1"]) == 0
        outs[name] = (tmp_path / f"{name}.out").read_text()
        assert "note:" not in capsys.readouterr().err
    assert outs["utf16"] == outs["utf16be"] == outs["utf8"] and outs["utf8"].count("\n") == 2
    (tmp_path / "latin1").write_bytes(text.encode("latin-1"))
    assert translate_main(["--ckpt_path", str(run["averaged"]), "-i", str(tmp_path / "latin1"), "-o",
                           str(tmp_path / "latin1.out"), "--beam_size", "1"]) == 0
    assert "is not valid UTF-8" in capsys.readouterr().err
    assert (tmp_path / "latin1.out").read_text().count("\n") == 2


def test_decoder_start_eos_reaches_training_decoding_and_translate(run, tmp_path, monkeypatch):
    """``decoder_start="eos"`` (fairseq's ``prev_output_tokens``): the teacher-forced input starts
    with EOS, decoding starts with it, and ``translate`` reads it from the checkpoint; checkpoints
    without the setting start with BOS."""
    import tx_suite.tasks.translation as translation
    from tx_suite.cli.translate import TranslateError
    from tx_suite.data.bpe import BOS_ID

    dm = _dm(run["cache"])
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for start, first in (("bos", BOS_ID), ("eos", EOS_ID)):
        task = TranslationTask(**TINY, decoder_start=start)
        seen = []
        forward_features = task.model.forward_features
        monkeypatch.setattr(task.model, "forward_features", lambda s, t, m: seen.append(t) or forward_features(s, t, m))
        task._loss(batch)
        assert (seen[0][:, 0] == first).all() and torch.equal(seen[0][:, 1:], batch["tgt_in"][:, 1:])
        calls = []
        monkeypatch.setattr(translation, "beam_search", lambda *a, **kw: calls.append(kw))
        task.generate(batch["src"][:1], batch["src_key_padding_mask"][:1])
        assert calls[0]["bos_id"] == first and calls[0]["eos_id"] == EOS_ID
    with pytest.raises(ValueError, match="decoder_start"):
        TranslationTask(**TINY, decoder_start="sep")
    ckpt = torch.load(run["averaged"], map_location="cpu", weights_only=True)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "decoder_start"}
    for extra, expected in (({}, BOS_ID), ({"decoder_start": "eos"}, EOS_ID), ({"decoder_start": "sep"}, None)):
        path = tmp_path / "c.ckpt"
        torch.save({**ckpt, "hyper_parameters": {**hp, **extra}}, path)
        if expected is None:
            with pytest.raises(TranslateError, match="decoder_start"):
                load_translator(path)
        else:
            assert load_translator(path)[2]["bos_id"] == expected
    # ... and translate_lines hands it to the decoder
    import tx_suite.cli.translate as translate_cli
    model, tok, _ = load_translator(run["averaged"])
    calls = []
    monkeypatch.setattr(translate_cli, "beam_search",
                        lambda *a, **kw: calls.append(kw) or torch.full((a[1].size(0), 1), EOS_ID))
    translate_lines(model, tok, ["A dog runs."], beam_size=2, bos_id=EOS_ID)
    assert calls and calls[0]["bos_id"] == EOS_ID
