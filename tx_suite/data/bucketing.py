"""Length-bucketed batches under a token budget (as fairseq's ``batch_by_size``).

Sentences of similar length are batched together so little compute is spent on padding, and each
batch holds as many sentences as fit in ``max_tokens`` padded tokens (Vaswani et al. 2017, §5.1:
"each training batch contained a set of sentence pairs containing approximately 25000 source
tokens and 25000 target tokens").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices whose padded size stays within ``max_tokens``.

    A batch of ``n`` sentences costs ``n * max(size)`` tokens, where ``size`` is the longer of
    source and target length of a pair (the padded tensor shape is what costs memory and time).
    A single pair longer than the budget still forms its own batch: nothing is dropped.

    Args:
        sizes: per-example size in tokens (e.g. ``max(len(src), len(tgt)) + 1``: one BOS or EOS per
            side, as ``TranslationDataset.sizes``).
        max_tokens: budget of padded tokens per batch.
        max_sentences: optional cap on the number of sentences per batch.
        shuffle: randomize ties within equal sizes and the order of batches, differently each
            epoch (``set_epoch``, which Lightning calls through :attr:`sampler`); otherwise
            batches come in size order.
        seed: base seed for the shuffling.
        num_replicas, rank: shard the batches over data-parallel processes (default: the
            initialized ``torch.distributed`` process group, else 1 and 0). Every rank builds the
            same list of batches (same seed and epoch) and takes batches ``rank, rank + N, ...``,
            as fairseq shards its batches; the list is padded with its first batches to a
            multiple of ``N``, so every rank runs the same number of steps (DDP needs that). A
            global step of ``N`` ranks thus covers ``N`` consecutive batches of one process.
            Lightning cannot inject its ``DistributedSampler`` into this sampler: train with
            ``Trainer(use_distributed_sampler=False)`` (``tx-suite`` sets it for data modules
            with ``shards_batches = True``).

    Attributes:
        sampler: an object whose ``set_epoch`` sets this sampler's epoch. Lightning calls
            ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler`` each epoch,
            never on a custom batch sampler itself; without this every epoch would repeat the
            first epoch's batches in the same order.
        start_batch: number of this rank's batches to skip on the next ``iter()`` (then reset to
            0); :class:`tx_suite.utils.resumable_loader.ResumableDataLoader` sets it to resume an
            epoch mid-way.

    Raises:
        ValueError: ``max_tokens`` or ``max_sentences`` is not positive, or ``rank`` is not in
            ``[0, num_replicas)``.
    """

    def __init__(self, sizes: Sequence[int], max_tokens: int, max_sentences: int | None = None,
                 shuffle: bool = True, seed: int = 0, num_replicas: int | None = None, rank: int | None = None):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if max_sentences is not None and max_sentences <= 0:
            raise ValueError(f"max_sentences must be positive, got {max_sentences}")
        self.sizes = torch.as_tensor(list(sizes), dtype=torch.long)
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.sampler = _EpochSetter(self)
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, num_replicas={self.num_replicas})")
        # The batch boundaries depend only on the sorted size sequence, which shuffling ties does
        # not change, so the number of batches is fixed and len() is exact.
        self._n_batches = len(self._batches(torch.argsort(self.sizes, stable=True)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, order: torch.Tensor) -> list[list[int]]:
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for i in order.tolist():
            size = int(self.sizes[i])
            new_longest = max(longest, size)
            full = (len(batch) + 1) * new_longest > self.max_tokens or (
                self.max_sentences is not None and len(batch) >= self.max_sentences)
            if batch and full:
                batches.append(batch)
                batch, new_longest = [], size
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
        return batches

    def _epoch_batches(self) -> list[list[int]]:
        """All batches of this epoch, in order, before sharding (the same on every rank)."""
        if not self.shuffle:
            return self._batches(torch.argsort(self.sizes, stable=True))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.sizes), generator=g)
        # Stable sort of a random permutation = sorted by size with random order among equal sizes.
        order = perm[torch.argsort(self.sizes[perm], stable=True)]
        batches = self._batches(order)
        return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch and the skip are read at the first next(), after Lightning's
        # set_epoch (it creates the DataLoader iterator before it sets the epoch).
        start, self.start_batch = self.start_batch, 0
        batches = self._epoch_batches()
        if self.num_replicas > 1:
            pad = len(self) * self.num_replicas - len(batches)
            batches = (batches + [batches[i % len(batches)] for i in range(pad)])[self.rank::self.num_replicas]
        yield from batches[start:]

    def __len__(self) -> int:
        return -(-self._n_batches // self.num_replicas)  # ceil: the padded share of one rank


class _EpochSetter:
    """Where Lightning looks for ``set_epoch`` (``batch_sampler.sampler``); forwards it."""

    def __init__(self, batch_sampler: TokenBudgetBatchSampler) -> None:
        self._batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self._batch_sampler.set_epoch(epoch)
