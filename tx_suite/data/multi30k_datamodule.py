"""LightningDataModule for Multi30k task 1 translation with a joint BPE and token-budget batches."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from tx_suite.data.bpe import BOS_ID, EOS_ID, N_BYTES, PAD_ID, SPECIAL_TOKENS, UNK_ID, BPETokenizer
from tx_suite.data.bucketing import TokenBudgetBatchSampler
from tx_suite.data.checksums import resolve_data_dir
from tx_suite.data.multi30k import check_names, default_data_dir, read_pair, split_path
from tx_suite.data.translation_dataset import TranslationDataset, collate_translation
from tx_suite.utils.eval_loader import eval_loader
from tx_suite.utils.resumable_loader import ResumableDataLoader

log = logging.getLogger(__name__)


class Multi30kDataModule(pl.LightningDataModule):
    """Multi30k task 1 (Elliott et al. 2016) for one language pair, e.g. de->en.

    The joint BPE model is learned on the source and target sides of ``train_split`` only and
    cached in ``cache_dir/bpe`` keyed by its settings and text. Batches are bucketed by length with
    ``max_tokens`` padded tokens each (see :class:`TokenBudgetBatchSampler`); the batch format is
    documented in :mod:`tx_suite.data.translation_dataset`.

    Args:
        src_lang, tgt_lang: two of ``en``, ``de``, ``fr``, ``cs``.
        train_split, val_split, test_split: split names; ``test_split`` may be any official split
            (non-bundled ones are fetched when ``download`` and online). ``predict`` uses
            ``test_split`` too.
        data_dir: data root holding ``multi30k/task1/raw`` (default: the repository's ``data/``).
        cache_dir: BPE models and fetched splits (default ``data_dir/cache``).
        vocab_size: joint BPE vocabulary size (special and byte tokens included).
        min_frequency: minimum count of a BPE merge.
        max_tokens: padded tokens per training batch.
        eval_max_tokens: padded tokens per validation/test batch (default ``max_tokens``).
        max_len: training pairs longer than this many tokens are dropped (evaluation keeps all).
        train_limit: use only the first ``train_limit`` training pairs (quick experiments, tests);
            the BPE is then learned on that slice.
        download: allow fetching non-bundled splits from the canonical location.
        num_workers: DataLoader workers (0: batches are built in the main process; they are cheap).
        seed: seed of the batch shuffling.
        lowercase: lowercase both sides of every split before anything else (BPE, training,
            scoring), as Multi30k's tokenized ``*.lc.norm.tok.*`` files that published tokenized
            BLEU scores use; case-sensitive BLEU then equals lowercased BLEU. The flag is saved in
            checkpoints, and ``tx-suite translate`` lowercases its input for such models.

    Raises:
        ValueError: bad language/split names or sizes (at construction, before any work).
    """

    def __init__(self, src_lang: str = "de", tgt_lang: str = "en", train_split: str = "train",
                 val_split: str = "val", test_split: str = "test_2016_flickr", data_dir: str | None = None,
                 cache_dir: str | None = None, vocab_size: int = 8000, min_frequency: int = 2,
                 max_tokens: int = 4096, eval_max_tokens: int | None = None, max_len: int = 128,
                 train_limit: int | None = None, download: bool = True, num_workers: int = 0, seed: int = 0,
                 lowercase: bool = False):
        super().__init__()
        if src_lang == tgt_lang:
            raise ValueError(f"src_lang and tgt_lang are both {src_lang!r}")
        if max_tokens < max_len:
            raise ValueError(f"max_tokens ({max_tokens}) must be >= max_len ({max_len}) so a longest pair fits")
        reserved = len(SPECIAL_TOKENS) + N_BYTES
        if vocab_size <= reserved:
            raise ValueError(f"vocab_size must be > {reserved} (4 special + 256 byte tokens), got {vocab_size}")
        # train_limit=-5 would slice off the last 5 pairs; 0 would learn a BPE of bytes only.
        for name, value in (("train_limit", train_limit), ("max_len", max_len), ("min_frequency", min_frequency),
                            ("eval_max_tokens", eval_max_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # logger=False: the CLI logs the whole config; Lightning refuses a key (vocab_size, text_len)
        # that both the model and the data save with different values, though they may differ
        self.save_hyperparameters(logger=False)
        # As the vision data: a relative "data" means the repository's data/ from any directory.
        self.data_dir = resolve_data_dir(data_dir) if data_dir else default_data_dir()
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache"
        self._tokenizer: BPETokenizer | None = None
        self.datasets: dict[tuple[str, bool], TranslationDataset] = {}  # by (split, as training pairs)
        # Names are checked now so that a typo fails at startup, not after training.
        for split in {train_split, val_split, test_split}:
            for lang in (src_lang, tgt_lang):
                check_names(split, lang)

    #: its loaders shard their batches over DDP ranks themselves (:class:`TokenBudgetBatchSampler`);
    #: the Trainer must not inject a ``DistributedSampler`` (``use_distributed_sampler=False``,
    #: which ``tx-suite`` sets for such data modules)
    shards_batches = True

    # ------------------------------------------------------------------ ids and tokenizer
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def _read(self, split: str) -> tuple[list[str], list[str]]:
        h = self.hparams
        src, tgt = read_pair(split, h.src_lang, h.tgt_lang, data_dir=self.data_dir, cache_dir=self.cache_dir,
                             download=h.download)
        if h.lowercase:
            src, tgt = [s.lower() for s in src], [t.lower() for t in tgt]
        return src, tgt

    def _train_text(self, split: str | None = None) -> tuple[list[str], list[str]]:
        src, tgt = self._read(split or self.hparams.train_split)
        n = self.hparams.train_limit
        return (src[:n], tgt[:n]) if n is not None else (src, tgt)

    @property
    def tokenizer(self) -> BPETokenizer:
        """The joint BPE model (trained on first use, then read from the cache)."""
        if self._tokenizer is None:
            src, tgt = self._train_text()
            self._tokenizer = BPETokenizer.load_or_train(src + tgt, self.cache_dir, self.hparams.vocab_size,
                                                         self.hparams.min_frequency)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        # Verify (or fetch) every file this run needs and build the BPE cache once, before setup().
        h = self.hparams
        for split in (h.train_split, h.val_split, h.test_split):
            for lang in (h.src_lang, h.tgt_lang):
                split_path(split, lang, self.data_dir, self.cache_dir, download=h.download)
        _ = self.tokenizer

    def dataset(self, split: str, train: bool | None = None) -> TranslationDataset:
        """Tokenized pairs of ``split``, cached. As training pairs (``train_limit``, pairs above
        ``max_len`` dropped) when ``train`` (default: ``split`` is ``train_split``), else all of them:
        a ``val_split`` equal to ``train_split`` is evaluated whole, not as the filtered training set."""
        train = split == self.hparams.train_split if train is None else train
        if (split, train) not in self.datasets:
            if train:
                src, tgt = self._train_text(split)
                ds = TranslationDataset(src, tgt, self.tokenizer, max_len=self.hparams.max_len)
                if ds.n_dropped:
                    log.info("dropped %d training pairs longer than %d tokens", ds.n_dropped, self.hparams.max_len)
                if not len(ds):  # fit would end with "no training batches" and exit status 0
                    raise ValueError(f"max_len {self.hparams.max_len} drops all {ds.n_dropped} training pairs")
            else:
                src, tgt = self._read(split)
                ds = TranslationDataset(src, tgt, self.tokenizer)
            self.datasets[split, train] = ds
        return self.datasets[split, train]

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit"):
            self.dataset(h.train_split)
        if stage in (None, "fit", "validate"):
            self.dataset(h.val_split, train=False)
        if stage in (None, "test", "predict"):
            self.dataset(h.test_split, train=False)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split, train)
        budget = self.hparams.max_tokens if train else (self.hparams.eval_max_tokens or self.hparams.max_tokens)
        # Batches are sharded over data-parallel ranks (the sampler reads the process group), for
        # evaluation too: TranslationTask gathers the ranks' hypotheses before corpus-level BLEU,
        # and PredictionWriter gathers predictions.
        sampler = TokenBudgetBatchSampler(ds.sizes(), budget, shuffle=train, seed=self.hparams.seed)
        # The training loader resumes mid-epoch where a checkpoint left it (--ckpt_path last).
        loader_cls = ResumableDataLoader if train else eval_loader
        return loader_cls(ds, batch_sampler=sampler, collate_fn=collate_translation,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, train=False)
