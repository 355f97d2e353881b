"""Captioned MNIST: deterministic scenes, renderer geometry, captions, the held-out split."""

import re
import shutil

import pytest
import torch

from tx_suite.data.captioned_mnist import CaptionedMNIST, load_mnist, render_scene
from tx_suite.data.captioned_mnist_datamodule import CaptionedMNISTDataModule
from tx_suite.data.captions import (
    COLOURS,
    DEFAULT_HELDOUT_PAIRS,
    POSITION_NAMES,
    Attributes,
    all_captions,
    all_combinations,
    caption_vocabulary,
    parse_caption,
    parse_pairs,
    split_combinations,
)
from tx_suite.data.captions_tokenizer import CaptionTokenizer
from tx_suite.data.checksums import ChecksumError

HELD = parse_pairs(DEFAULT_HELDOUT_PAIRS)


def test_scenes_are_a_function_of_seed_and_index():
    a = CaptionedMNIST(split="train", size=40, seed=3)
    b = CaptionedMNIST(split="train", size=40, seed=3)
    c = CaptionedMNIST(split="train", size=40, seed=4)
    for i in (0, 17, 39):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(5))
    # Scene i does not depend on the dataset length (a bigger dataset extends a smaller one).
    longer = CaptionedMNIST(split="train", size=400, seed=3)
    for i in (0, 17, 39):
        assert torch.equal(a[i]["image"], longer[i]["image"]) and a[i]["caption"] == longer[i]["caption"]


def test_training_captions_never_describe_heldout_pairs():
    train = CaptionedMNIST(split="train", combos="seen", size=3000, seed=0)
    parsed = [parse_caption(train.caption(i)) for i in range(len(train))]
    assert all((p.digit, p.colour) not in HELD for p in parsed)
    # The caption says what the scene record holds, so the image labels agree with the text.
    assert all(p == train.attributes(i) for i, p in enumerate(parsed))
    # Every seen combination of digit and colour is actually used (not an empty training set).
    assert {(p.digit, p.colour) for p in parsed} == {(d, c) for d in range(10)
                                                     for c in range(len(COLOURS))} - HELD
    held = CaptionedMNIST(split="test", combos="heldout", size=500, seed=0)
    assert all((held.attributes(i).digit, held.attributes(i).colour) in HELD for i in range(500))
    assert all(held[i]["heldout"] for i in range(0, 500, 50))


def test_split_covers_all_combinations_and_rejects_bad_pairs():
    seen, heldout = split_combinations(DEFAULT_HELDOUT_PAIRS)
    assert len(seen) + len(heldout) == len(all_combinations()) == 600
    assert not set(seen) & set(heldout)
    assert parse_pairs(["7-green", [7, "green"], (7, 1)]) == {(7, 1)}
    with pytest.raises(ValueError, match="unknown colour"):
        parse_pairs(["7-purple"])
    # every malformed entry is a ValueError naming it as written (was int()'s bare message or a TypeError)
    for bad, says in (("seven-red", "'seven-red': the digit must be 0..9, got 'seven'"), (7, "7 is not (digit, colour)"),
                      ([7.5, "red"], "the digit must be 0..9, got 7.5"), ([7, None], "colour must be a name or an index"),
                      ("12-red", "'12-red': the digit must be 0..9, got 12")):
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_pairs([bad])
    with pytest.raises(ValueError, match="every seen example"):
        split_combinations([(3, c) for c in COLOURS])


def test_every_template_caption_parses_back():
    for attrs in all_combinations()[::7]:
        for text in all_captions(attrs):
            assert parse_caption(text) == attrs, text
    assert parse_caption("top-left: tiny red 7") == Attributes(7, 0, 0, 0)
    with pytest.raises(ValueError, match="digit"):
        parse_caption("a small red digit in the center")


def test_render_puts_the_tinted_digit_where_the_attributes_say():
    images, labels = load_mnist("data", train=False)
    digit = images[0]
    for pos in range(len(POSITION_NAMES)):
        small = render_scene(digit, Attributes(int(labels[0]), 2, 0, pos))
        large = render_scene(digit, Attributes(int(labels[0]), 2, 1, pos))
        ink = small.sum(0) > 0.1
        ys, xs = torch.nonzero(ink, as_tuple=True)
        cy, cx = ys.float().mean(), xs.float().mean()
        name = POSITION_NAMES[pos]
        if "left" in name:
            assert cx < 12
        if "right" in name:
            assert cx > 20
        if "top" in name:
            assert cy < 12
        if "bottom" in name:
            assert cy > 20
        if name == "center":
            assert 12 < cx < 20 and 12 < cy < 20
        assert (large.sum(0) > 0.1).sum() > 1.5 * ink.sum()  # 20 px vs 14 px glyph
    # Colour: every lit pixel is intensity * (0.2, 0.4, 1.0) ("blue").
    lit = small[:, small.sum(0) > 0]
    assert torch.allclose(lit[0] / lit[2], torch.full_like(lit[0], 0.2), atol=1e-5)


def test_eval_splits_use_mnist_test_digits():
    train_images, _ = load_mnist("data", train=True)
    test_images, _ = load_mnist("data", train=False)
    val = CaptionedMNIST(split="val", size=10)
    assert torch.equal(val.images, test_images[:5000])
    assert torch.equal(CaptionedMNIST(split="test", size=10).images, test_images[5000:])
    assert torch.equal(CaptionedMNIST(split="train", size=10).images, train_images)


def test_corrupt_mnist_file_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(f"data/MNIST/raw/{f}", raw / f)
    with open(raw / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ChecksumError, match="t10k-labels"):
        load_mnist(str(tmp_path), train=False)


def test_tokenizer_fixed_length_and_datamodule_batch():
    tok = CaptionTokenizer.word_level(caption_vocabulary(), max_len=16)
    ids = tok.encode(["top-left: tiny red 7", "a purple seven"])
    assert ids.shape == (2, 16) and ids[0, 7:].eq(tok.pad_id).all()
    assert ids[1, 1] == tok.unk_id  # "purple" is not a caption word
    # special tokens typed in a caption are unknown words: "[PAD]" alone was the empty caption
    typed = tok.encode(["[PAD]", "tiny [BOI] red [UNK] 7"])
    assert typed[0, 0] == tok.unk_id and typed[0, 1:].eq(tok.pad_id).all()
    assert typed[1, :5].tolist() == [ids[0, 4], tok.unk_id, ids[0, 5], tok.unk_id, ids[0, 6]]
    assert tok.decode(ids[:1]) == ["top - left : tiny red 7"]
    # Capitals are the same words (users type them), for the tokenizer and the judge's parser.
    assert torch.equal(tok.encode(["Top-Left: Tiny RED 7"]), ids[:1])
    assert parse_caption("Top-left: tiny Red 7") == parse_caption("top-left: tiny red 7") == Attributes(7, 0, 0, 0)
    dm = CaptionedMNISTDataModule(batch_size=8, train_size=16, val_size=8, test_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["text"].shape == (8, 16)
    assert torch.equal(batch["text"], tok.encode(batch["caption"]))


def test_a_long_caption_keeps_its_first_tokens():
    tok = CaptionTokenizer.word_level(caption_vocabulary(), max_len=4)
    caption = "top-left: tiny red 7"  # 7 tokens: top - left : tiny red 7
    assert tok.n_truncated([caption, "tiny red 7"]) == 1
    assert tok.decode(tok.encode([caption])) == ["top - left :"]


def test_scene_shows_an_mnist_image_of_its_digit_with_jitter_and_the_heldout_flag():
    for split, train in (("train", True), ("val", False)):
        images, labels = load_mnist("data", train=train)
        ds = CaptionedMNIST(split=split, combos="all", size=300, seed=1)
        if split == "val":
            labels = labels[:5000]
        flags = []
        for i in range(0, 300, 3):
            item, attrs = ds[i], ds.attributes(i)
            assert int(labels[ds.image_index[i]]) == attrs.digit == int(item["digit"])  # the image is that digit
            jitter = tuple(int(j) for j in ds.jitter[i])
            assert torch.equal(item["image"], render_scene(images[ds.image_index[i]], attrs, jitter))
            assert bool(item["heldout"]) == ((attrs.digit, attrs.colour) in HELD)
            flags.append(bool(item["heldout"]))
        assert any(flags) and not all(flags)
        assert {tuple(j) for j in ds.jitter.tolist()} == {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    # val and test are two samples, not one sequence of scenes drawn twice
    val, test = CaptionedMNIST(split="val", size=50), CaptionedMNIST(split="test", size=50)
    assert [val.caption(i) for i in range(50)] != [test.caption(i) for i in range(50)]


def test_datamodule_splits_follow_combos_and_heldout_pairs():
    dm = CaptionedMNISTDataModule(batch_size=8, train_size=400, val_size=400, test_size=16,
                                  heldout_pairs=["3-red", "5-blue"])
    dm.setup("fit")
    held = {(3, 0), (5, 2)}
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert not any((a.digit, a.colour) in held for a in map(train.attributes, range(400)))
    in_val = {(a.digit, a.colour) for a in map(val.attributes, range(400))}
    assert held <= in_val and len(in_val) > 30  # eval_combos="all": held-out and seen pairs
    assert val._heldout == held
    # evaluation batches come in dataset order (rows of logged samples line up with scenes)
    batch = next(iter(dm.val_dataloader()))
    assert batch["caption"] == [val.caption(i) for i in range(8)]


@pytest.mark.parametrize("setting, message", [({"train_size": 0}, "train_size must be >= 1, got 0"),
                                              ({"val_size": -5}, "val_size must be >= 0, got -5"),
                                              ({"batch_size": 0}, "batch_size must be >= 1, got 0")])
def test_datamodule_names_a_bad_size(setting, message):
    """train_size 0 trained on no batches and exited 0; a negative size failed later with numpy's
    "negative dimensions are not allowed"."""
    with pytest.raises(ValueError, match=message):
        CaptionedMNISTDataModule(**setting)
