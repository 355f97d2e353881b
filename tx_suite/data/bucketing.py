"""Length-bucketed batches under a token budget (as fairseq's ``batch_by_size``).

Sentences of similar length are batched together so little compute is spent on padding, and each
batch holds as many sentences as fit in ``max_tokens`` padded tokens (Vaswani et al. 2017, §5.1:
"each training batch contained a set of sentence pairs containing approximately 25000 source
tokens and 25000 target tokens").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices whose padded size stays within ``max_tokens``.

    A batch of ``n`` sentences costs ``n * max(size)`` tokens, where ``size`` is the longer of
    source and target length of a pair (the padded tensor shape is what costs memory and time).
    A single pair longer than the budget still forms its own batch: nothing is dropped.

    Args:
        sizes: per-example size in tokens (e.g. ``max(len(src), len(tgt)) + 2``).
        max_tokens: budget of padded tokens per batch.
        max_sentences: optional cap on the number of sentences per batch.
        shuffle: randomize ties within equal sizes and the order of batches, differently each
            epoch (``set_epoch``, which Lightning calls); otherwise batches come in size order.
        seed: base seed for the shuffling.

    Raises:
        ValueError: ``max_tokens`` or ``max_sentences`` is not positive.
    """

    def __init__(self, sizes: Sequence[int], max_tokens: int, max_sentences: int | None = None,
                 shuffle: bool = True, seed: int = 0):
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

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from self._batches(torch.argsort(self.sizes, stable=True))
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.sizes), generator=g)
        # Stable sort of a random permutation = sorted by size with random order among equal sizes.
        order = perm[torch.argsort(self.sizes[perm], stable=True)]
        batches = self._batches(order)
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]

    def __len__(self) -> int:
        return self._n_batches
