"""A DataLoader that resumes mid-epoch exactly and orders data the same on 1 or N processes (plain torch).

Why: Lightning 2.6 restores the loop counters of a mid-epoch checkpoint, but a plain DataLoader
starts its epoch over with a new shuffle (Lightning warns "your dataloader is not resumable"), so
the resumed run sees other batches than the uninterrupted one. Lightning saves and restores the
state of any train dataloader that has ``state_dict``/``load_state_dict`` (``fit_loop`` ->
``CombinedLoader._state_dicts``), which :class:`ResumableDataLoader` provides:

* the order is a permutation seeded by ``seed + epoch`` (Lightning calls ``set_epoch`` every
  epoch), as :class:`torch.utils.data.DistributedSampler` does, so it does not depend on the
  global RNG and a resumed epoch has the same order;
* the state is the number of batches already served in the epoch; after ``load_state_dict`` the
  next iteration skips that many batches at the sampler level (no data is loaded for them, and no
  random transform is drawn for them);
* the sampler *is* a ``DistributedSampler``: under DDP it shards the permutation over the ranks of
  the process group (rank ``r`` takes indices ``r, r + world, ...``), so global batch ``k`` of
  ``world`` ranks with ``batch_size = B / world`` holds exactly the samples of batch ``k`` of one
  process with ``batch_size = B``; Lightning keeps it instead of injecting its own sampler;
* the loader draws its worker base seed from its own generator, not the global RNG, so creating
  the iterator after a checkpoint was restored does not shift the restored RNG stream (dropout).

Exactness holds for ``num_workers=0`` (random transforms draw from the restored global RNG). With
worker processes the order and the skipped batches are still exact, but random transforms in the
workers are seeded per iteration and differ after a resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler


def _default_seed() -> int:
    """Lightning's ``seed_everything`` seed (``PL_GLOBAL_SEED``), which its own samplers use; else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seed + epoch permutation, sharded over ranks) that can start mid-epoch.

    Args:
        dataset: a sized (map-style) dataset.
        shuffle: permute (True) or keep the dataset order.
        seed: permutation seed (default: ``PL_GLOBAL_SEED``, set by ``seed_everything``, else 0).
        drop_last: as in :class:`~torch.utils.data.DistributedSampler` (drop the tail that does not
            split evenly over the ranks instead of padding with repeats).
        num_replicas, rank: default to the initialized process group, else 1 and 0.

    Attributes:
        start_index: number of this rank's indices to skip on the next ``iter()`` (then reset to 0).
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int | None = None, drop_last: bool = False,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=_default_seed() if seed is None else seed, drop_last=drop_last)
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start_index = self.start_index, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableSampler` with ``state_dict``/``load_state_dict``.

    Use it for the train loader of a datamodule; Lightning stores its state in every checkpoint
    and restores it on ``--ckpt_path``. ``len()`` is always the full epoch's number of batches
    (Lightning counts the skipped ones as already done).

    Either it builds a :class:`ResumableSampler` (``batch_size``, ``shuffle``, ``seed``,
    ``drop_last``), or it takes a ``batch_sampler`` of your own that orders each epoch
    deterministically (seed + ``set_epoch``) and skips its first ``start_batch`` batches on the
    next ``iter()`` (as :class:`tx_suite.data.bucketing.TokenBudgetBatchSampler` does).

    Args:
        dataset: a sized (map-style) dataset.
        batch_size: samples per batch on this process (under DDP: per rank).
        shuffle, seed, drop_last: see :class:`ResumableSampler` (``drop_last`` also drops a last
            incomplete batch, as in ``DataLoader``).
        batch_sampler: a resumable batch sampler (see above) instead of the built-in sampler; then
            ``batch_size``, ``shuffle`` and ``drop_last`` must stay at their defaults.
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``pin_memory``,
            ...); ``sampler`` is not accepted, except a ``SequentialSampler``, which means
            ``shuffle=False`` (Lightning's ``overfit_batches`` passes one).

    Raises:
        TypeError: another ``sampler`` was given, or a ``batch_sampler`` without ``start_batch``.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = False, seed: int | None = None,
                 drop_last: bool = False, batch_sampler: Any = None, **kwargs: Any) -> None:
        sampler = kwargs.pop("sampler", None)
        if isinstance(sampler, SequentialSampler) and batch_sampler is None:
            shuffle = False  # Lightning's overfit_batches rebuilds the loader to read the data in order
        elif sampler is not None:
            raise TypeError("ResumableDataLoader builds its own sampler (sharded over the ranks itself); "
                            f"do not pass sampler (got {type(sampler).__name__})")
        if batch_sampler is not None:
            if not hasattr(batch_sampler, "start_batch"):
                raise TypeError(f"{type(batch_sampler).__name__} cannot resume mid-epoch: it has no `start_batch`")
            # Own generator: iter() draws the workers' base seed from it instead of the global RNG.
            kwargs.setdefault("generator", torch.Generator().manual_seed(int(getattr(batch_sampler, "seed", 0))))
            super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        else:
            sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
            kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
            super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
        self._served = 0  # batches of the current epoch handed out (skipped ones included)
        self._resume_at = 0  # batches to skip on the next iter(), from load_state_dict
        self._resume_epoch: int | None = None  # the epoch those batches belong to

    def __iter__(self) -> Iterator[Any]:
        # The skip is taken now (not in the generator): it belongs to the iterator created now,
        # even if no batch is ever drawn from it, and a stale skip never leaks into a later epoch.
        skip, self._resume_at = self._resume_at, 0
        epoch, self._resume_epoch = self._resume_epoch, None
        self._served = skip
        return self._batches(skip, epoch)

    def _order(self) -> Any:
        """The object that orders the epoch (has ``epoch`` and ``set_epoch``)."""
        return self.sampler if isinstance(self.sampler, ResumableSampler) else self.batch_sampler

    def _batches(self, skip: int, epoch: int | None = None) -> Iterator[Any]:
        # A generator: DataLoader's own iterator is made at the first next(). Lightning creates a
        # resumed fit's first iterator before it calls set_epoch, and worker processes
        # (num_workers > 0) draw their indices from the sampler as soon as their iterator exists:
        # made then, a fit resumed from an epoch end trained its next epoch in epoch 0's order.
        if skip and epoch is not None and getattr(self._order(), "epoch", epoch) != epoch:
            # Saved at the last batch of its epoch (every_n_train_steps dividing the epoch): the
            # restored loop counts that epoch done and draws this iterator in the next one, whose
            # batches are all still to come. Skipping there trained an epoch of nothing.
            skip = self._served = 0
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.start_index = skip * self.batch_size
        else:
            self.batch_sampler.start_batch = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_served"}``: where the current epoch stands (ints only: weights_only-safe)."""
        epoch = getattr(self.sampler, "epoch", getattr(self.batch_sampler, "epoch", 0))
        return {"epoch": int(epoch), "batches_served": int(self._served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next ``iter()`` order the saved epoch and skip the batches already served in it.

        The epoch is restored here, not left to Lightning's ``set_epoch``: Lightning creates the
        resumed fit's first iterator before it sets the epoch, and worker processes
        (``num_workers`` > 0) draw their first indices from the sampler as soon as the iterator
        exists, so they would skip into epoch 0's order (samples trained twice, others never).
        """
        self._resume_at = int(state.get("batches_served", 0))
        if "epoch" in state:
            self._resume_epoch = int(state["epoch"])
            self._order().set_epoch(self._resume_epoch)
