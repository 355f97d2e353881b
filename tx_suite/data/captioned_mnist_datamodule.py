"""LightningDataModule for Captioned MNIST scenes (judge, VQ-VAE and text-to-image stages)."""

from __future__ import annotations

from typing import Sequence

from tx_suite.data.captioned_mnist import CaptionedMNIST
from tx_suite.data.captions import DEFAULT_HELDOUT_PAIRS, caption_vocabulary, parse_pairs
from tx_suite.data.captioned_images_datamodule import CaptionedImagesDataModule
from tx_suite.data.captions_tokenizer import CaptionTokenizer


class CaptionedMNISTDataModule(CaptionedImagesDataModule):
    """Captioned MNIST: train scenes from MNIST train digits, val/test scenes from MNIST test digits.

    Args:
        root: data root holding ``MNIST/raw``.
        batch_size: scenes per batch.
        train_size, val_size, test_size: number of scenes per split.
        seed: scene seed (scenes are a pure function of seed, split and index).
        heldout_pairs: (digit, colour) pairs never in training, as ``"7-green"`` strings;
            ``None`` = :data:`tx_suite.data.captions.DEFAULT_HELDOUT_PAIRS`.
        train_combos: ``"seen"`` for the generator; ``"all"`` for the judge, an instrument that
            must read every combination.
        eval_combos: combinations of val/test scenes (``"all"`` mixes seen and held-out; each
            item carries a ``heldout`` flag so metrics can be split).
        text_len: captions are padded/cut to this many tokens.
        num_workers: DataLoader workers.

    Batches are dicts: ``image`` ``(B, 3, 32, 32)`` in [0, 1], ``text`` ``(B, text_len)`` long,
    ``digit``/``colour``/``size``/``position`` ``(B,)`` long, ``heldout`` ``(B,)`` bool,
    ``caption`` (list of str).

    Raises:
        ValueError: ``batch_size``, ``train_size`` or ``text_len`` below 1, or ``val_size``,
            ``test_size`` or ``num_workers`` below 0 (named in the message).
    """

    def __init__(self, root: str = "data", batch_size: int = 64, train_size: int = 20000,
                 val_size: int = 2000, test_size: int = 5000, seed: int = 0,
                 heldout_pairs: Sequence[str] | None = None, train_combos: str = "seen",
                 eval_combos: str = "all", text_len: int = 16, num_workers: int = 0):
        super().__init__()
        # train_size 0 trained on nothing and exited 0; negative sizes failed later, unnamed.
        self.check_sizes(batch_size=(batch_size, 1), train_size=(train_size, 1), val_size=(val_size, 0),
                         test_size=(test_size, 0), text_len=(text_len, 1), num_workers=(num_workers, 0))
        # logger=False: the CLI logs the whole config; Lightning refuses a key (vocab_size, text_len)
        # that both the model and the data save with different values, though they may differ
        self.save_hyperparameters(logger=False)
        self.heldout_pairs = sorted(parse_pairs(DEFAULT_HELDOUT_PAIRS if heldout_pairs is None
                                                else heldout_pairs))
        # The templates fix the vocabulary, so the tokenizer needs no training data.
        self.tokenizer = CaptionTokenizer.word_level(caption_vocabulary(), max_len=text_len)
        self.datasets: dict[str, CaptionedMNIST] = {}

    def _dataset(self, split: str, combos: str, size: int) -> CaptionedMNIST:
        h = self.hparams
        return CaptionedMNIST(h.root, split=split, combos=combos, size=size, seed=h.seed,
                              heldout_pairs=self.heldout_pairs)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._dataset("train", h.train_combos, h.train_size)
        if stage in (None, "fit", "validate") and "val" not in self.datasets:
            self.datasets["val"] = self._dataset("val", h.eval_combos, h.val_size)
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self._dataset("test", h.eval_combos, h.test_size)
