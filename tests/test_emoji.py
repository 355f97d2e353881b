"""Emoji: sprite-sheet cells, captions, held-out emoji, caption tokenizers."""

import torch

from tx_suite.data.captions_tokenizer import CaptionTokenizer
from tx_suite.data.emoji import EmojiDataset, cell_image, load_records, load_sheet, skin_tone_words
from tx_suite.data.emoji_datamodule import EmojiDataModule


def test_records_and_captions():
    records = load_records("data")
    assert len(records) == 1911 + 1875  # bases + skin-tone variations (data/README.md)
    captions = {r.caption for r in records}
    assert "father christmas: medium-dark skin tone" in captions
    assert "red apple" in captions
    assert skin_tone_words("1F3FB-1F3FF") == "light skin tone, dark skin tone"
    assert skin_tone_words("1F3FD-1F3FD") == "medium skin tone"


def test_cells_are_composited_on_white_and_differ_by_vendor():
    records = {r.caption: r for r in load_records("data")}
    apple = records["red apple"]
    tw = cell_image(load_sheet("data", "twitter"), apple.sheet_x, apple.sheet_y)
    go = cell_image(load_sheet("data", "google"), apple.sheet_x, apple.sheet_y)
    assert tw.shape == (3, 32, 32) and 0 <= tw.min() and tw.max() <= 1
    assert torch.allclose(tw[:, 0, 0], torch.ones(3))  # transparent corner -> white
    r, g, b = tw[:, 12:20, 12:20].mean((1, 2))  # the middle of a red apple is red
    assert r > 0.6 and r > 2 * g and r > 2 * b
    assert (tw - go).abs().mean() > 0.02  # two vendors: two different drawings


def test_heldout_emoji_are_disjoint_and_keep_variations_together():
    train = EmojiDataset(split="train", vendors=["twitter"])
    val = EmojiDataset(split="val", vendors=["twitter"])
    test = EmojiDataset(split="test", vendors=["twitter"])
    names = [{r.name for r in d.records} for d in (train, val, test)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    assert len(train) + len(val) + len(test) == 3786
    assert 0.05 < (len(names[1]) + len(names[2])) / 1911 < 0.15
    # Same choice when the vendor set changes: the split is a function of the name only.
    both = EmojiDataset(split="val")
    assert {r.name for r in both.records} == names[1] and len(both) == 2 * len(val)
    assert both[len(val)]["vendor"] == 1 and both[0]["caption"] == both[len(val)]["caption"]
    # the held-out choice is a function of the seed too
    assert {r.name for r in EmojiDataset(split="val", vendors=["twitter"], seed=1).records} != names[1]


def test_bpe_covers_heldout_names_better_than_words():
    dm = EmojiDataModule(tokenizer="bpe", vocab_size=1024, text_len=24)
    dm.setup("fit")
    held = [r.caption for r in dm.datasets["val"].records]
    word = CaptionTokenizer.train([r.caption for r in dm.datasets["train"].records], kind="word",
                                  vocab_size=1024, max_len=24)
    assert dm.tokenizer.vocab_size <= 1024
    assert dm.tokenizer.unknown_rate(held) < 0.01 < word.unknown_rate(held)
    batch = next(iter(dm.val_dataloader()))
    assert batch["text"].shape == (64, 24) and batch["image"].shape == (64, 3, 32, 32)


def test_cell_is_the_sheet_cell_composited_over_white():
    """Cell (x, y) is the 32 x 32 block at pixel (34 x + 1, 34 y + 1), alpha-composited on white;
    checked on a cell with partly transparent edge pixels."""
    import numpy as np
    from PIL import Image

    apple = {r.caption: r for r in load_records("data")}["red apple"]
    x, y = apple.sheet_x, apple.sheet_y
    with Image.open("data/emoji/sheet-twitter-32.png") as im:
        cell = np.asarray(im.convert("RGBA").crop((34 * x + 1, 34 * y + 1, 34 * x + 33, 34 * y + 33)), dtype=np.float64) / 255
    a = cell[..., 3:]
    assert ((a > 0) & (a < 1)).sum() > 20 and (cell[..., :3][a[..., 0] < 1] > 0).any()  # soft edges with colour
    expected = torch.from_numpy(cell[..., :3] * a + (1 - a)).permute(2, 0, 1).float()
    torch.testing.assert_close(cell_image(load_sheet("data", "twitter"), x, y), expected, atol=1e-6, rtol=0)


def test_skin_tone_variations_are_their_own_images():
    ds = EmojiDataset(split="all", vendors=["twitter"])
    index = {r.caption: i for i, r in enumerate(ds.records)}
    base = ds[index["father christmas"]]["image"]
    tones = [ds[index[f"father christmas: {t}"]]["image"] for t in ("light skin tone", "dark skin tone")]
    assert (base - tones[0]).abs().mean() > 0.01 and (tones[0] - tones[1]).abs().mean() > 0.01


def test_datamodule_eval_vendor_and_tokenizer_from_training_captions_only():
    dm = EmojiDataModule(train_vendors=["twitter"], eval_vendors=["google"], tokenizer="word", vocab_size=4096)
    dm.setup("fit")
    assert dm.datasets["train"].vendors == ["twitter"]
    assert dm.datasets["val"].vendors == dm.datasets["test"].vendors == ["google"]
    assert int(dm.datasets["val"][0]["vendor"]) == 1
    held = [r.caption for r in dm.datasets["val"].records + dm.datasets["test"].records]
    assert dm.tokenizer.unknown_rate(held) > 0.01  # held-out names were not in the vocabulary's text


def test_items_are_all_captions_of_the_first_vendor_then_the_second():
    val = EmojiDataset(split="val", vendors=["twitter", "google"])
    n = len(val.records)
    tw, go = load_sheet("data", "twitter"), load_sheet("data", "google")
    for i in (0, 1, n - 1):
        r = val.records[i]
        first, second = val[i], val[n + i]
        assert (int(first["vendor"]), int(second["vendor"])) == (0, 1)
        assert first["caption"] == second["caption"] == r.caption
        torch.testing.assert_close(first["image"], cell_image(tw, r.sheet_x, r.sheet_y), atol=1 / 255, rtol=0)
        torch.testing.assert_close(second["image"], cell_image(go, r.sheet_x, r.sheet_y), atol=1 / 255, rtol=0)


def test_bundled_data_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """The default root "data" was taken from the working directory: emoji and Captioned MNIST
    failed outside the repository ("data file not found: data/emoji/emoji.json"), unlike MNIST."""
    from tx_suite.data.captioned_mnist import load_mnist

    here = len(load_records())
    monkeypatch.chdir(tmp_path)
    load_records.cache_clear(), load_mnist.cache_clear()  # cached results would pass whatever the root
    assert len(load_records()) == here
    images, labels = load_mnist(train=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def test_bad_settings_are_named_at_construction():
    """A repeated vendor silently doubled the training data; heldout_fraction 0 failed at setup
    with "empty emoji selection"; batch_size 0 passed until the loader was built."""
    import pytest

    with pytest.raises(ValueError, match="vendors must not repeat"):
        EmojiDataset(split="train", vendors=["twitter", "twitter"])
    for fraction in (0.0, -0.2, 1.0):
        with pytest.raises(ValueError, match="heldout_fraction must be in"):
            EmojiDataset(split="train", heldout_fraction=fraction)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        EmojiDataModule(batch_size=0)
