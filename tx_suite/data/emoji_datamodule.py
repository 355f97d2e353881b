"""LightningDataModule for captioned emoji (VQ-VAE and text-to-image stages)."""

from __future__ import annotations

from typing import Sequence

from tx_suite.data.captioned_images_datamodule import CaptionedImagesDataModule
from tx_suite.data.captions_tokenizer import CaptionTokenizer
from tx_suite.data.emoji import VENDORS, EmojiDataset


class EmojiDataModule(CaptionedImagesDataModule):
    """Emoji images captioned with their names; held-out emoji (by base name) for val and test.

    Args:
        root: data root holding ``emoji/``.
        batch_size: images per batch.
        train_vendors, eval_vendors: sprite sheets for training and for val/test (training on
            one vendor and measuring on the other is the held-out-vendor check of
            ``data/README.md``).
        heldout_fraction: fraction of base emoji held out; half go to val, half to test.
        seed: seed of the held-out choice.
        skin_tones: include skin-tone variations.
        tokenizer: ``"bpe"`` (sub-words: held-out names rarely hit ``[UNK]``) or ``"word"``.
        vocab_size: caption vocabulary size (specials included), learned from training captions.
        text_len: captions are padded/cut to this many tokens.
        num_workers: DataLoader workers.

    Batches are dicts: ``image`` ``(B, 3, 32, 32)`` in [0, 1], ``text`` ``(B, text_len)`` long,
    ``vendor`` ``(B,)`` long, ``caption`` (list of str).

    Raises:
        ValueError: ``batch_size``, ``vocab_size`` or ``text_len`` below 1, ``num_workers``
            below 0, a vendor listed twice, or ``heldout_fraction`` outside (0, 1).
    """

    def __init__(self, root: str = "data", batch_size: int = 64,
                 train_vendors: Sequence[str] = VENDORS, eval_vendors: Sequence[str] = VENDORS,
                 heldout_fraction: float = 0.1, seed: int = 0, skin_tones: bool = True,
                 tokenizer: str = "bpe", vocab_size: int = 1024, text_len: int = 24,
                 num_workers: int = 0):
        super().__init__()
        self.check_sizes(batch_size=(batch_size, 1), vocab_size=(vocab_size, 1), text_len=(text_len, 1),
                         num_workers=(num_workers, 0))
        # logger=False: the CLI logs the whole config; Lightning refuses a key (vocab_size, text_len)
        # that both the model and the data save with different values, though they may differ
        self.save_hyperparameters(logger=False)
        self.datasets: dict[str, EmojiDataset] = {}
        train = self._dataset("train", train_vendors)
        self.datasets["train"] = train
        self.tokenizer = CaptionTokenizer.train([r.caption for r in train.records], kind=tokenizer,
                                                vocab_size=vocab_size, max_len=text_len)

    def _dataset(self, split: str, vendors: Sequence[str]) -> EmojiDataset:
        h = self.hparams
        return EmojiDataset(h.root, split=split, vendors=list(vendors),
                            heldout_fraction=h.heldout_fraction, seed=h.seed,
                            skin_tones=h.skin_tones)

    def setup(self, stage: str | None = None) -> None:
        for split in ("val", "test"):
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split, self.hparams.eval_vendors)
