"""Loader plumbing shared by the captioned-image datamodules (Captioned MNIST, emoji)."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, default_collate

from tx_suite.data.captions_tokenizer import CaptionTokenizer
from tx_suite.utils.eval_loader import eval_loader
from tx_suite.utils.resumable_loader import ResumableDataLoader


class CaptionedImagesDataModule(pl.LightningDataModule):
    """Base for datamodules whose items are dicts with an ``image`` and a ``caption`` string.

    Subclasses fill ``self.datasets`` (keys ``train``/``val``/``test``) in ``setup`` and set
    ``self.tokenizer``; batches gain ``text`` ``(B, text_len)`` long, the tokenized captions.
    ``predict`` uses the test split, its batches also carry ``index`` ``(B,)``, each item's
    position in it. Reads ``batch_size`` and ``num_workers`` from the hparams.
    """

    tokenizer: CaptionTokenizer

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    @staticmethod
    def check_sizes(**sizes: tuple[int, int]) -> None:
        """Refuse a setting below its minimum, naming it: ``check_sizes(batch_size=(64, 1), ...)``.

        Raises:
            ValueError: ``value < minimum`` for some ``name=(value, minimum)``.
        """
        for name, (value, minimum) in sizes.items():
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")

    def collate(self, items: list[dict]) -> dict:
        batch = default_collate(items)
        batch["text"] = self.tokenizer.encode(batch["caption"])
        return batch

    def _loader(self, split: str, shuffle: bool, with_index: bool = False) -> DataLoader:
        # The (shuffled) training loader resumes mid-epoch where a checkpoint left it.
        loader_cls = ResumableDataLoader if shuffle else eval_loader
        dataset = WithIndex(self.datasets[split]) if with_index else self.datasets[split]
        return loader_cls(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, collate_fn=self.collate,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        # Items carry their test-set index: predict seeds each sample by it, so an image does not
        # depend on the batch or the DDP rank the caption landed in.
        return self._loader("test", shuffle=False, with_index=True)


class WithIndex(Dataset):
    """A dict-item dataset whose items gain ``index``: their position in ``dataset``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "index": i}
