"""Which sample each step sees, and with which random seed: a pure function of (seed, epoch, position).

This is what makes a run resumable in the middle of an epoch and equal across process counts:

* the order of an epoch comes from a sampler re-seeded by ``set_epoch`` (shuffling, repeated
  augmentation and the split between ranks are decided there);
* :class:`EpochOrder` skips the samples a resumed run has already trained on;
* each sample carries its own seed, made from its *global* position in the epoch, and
  :class:`SeededSamples` runs the dataset's transform under that seed. Augmentations therefore
  do not depend on the DataLoader worker that happens to load a sample, nor on the rank
  (``global position = local position * world_size + rank`` for the stride split that
  ``DistributedSampler`` and the repeated-augmentation sampler use).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one sample (neighbouring positions get unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of the main process's random state at the start of optimizer step ``step``."""
    return int(np.random.SeedSequence([seed, 1 << 20 | rank, step]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and GPUs): the main process, at every batch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_sample(seed: int) -> None:
    """Seed the generators an augmentation may draw from; CPU only, so cheap enough per sample.

    The caller's random state is not restored: the training loop reseeds the main process at
    every batch (:func:`step_seed`), after the batch has been loaded.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


class EpochOrder(Sampler[tuple[int, int]]):
    """Yield ``(dataset index, sample seed)`` for this rank, from position ``skip`` on.

    ``sampler`` gives this rank's indices for an epoch and has ``set_epoch``.
    """

    def __init__(self, sampler: Any, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, leaving out its first ``skip`` samples (already trained on)."""
        self.epoch = epoch
        self.skip = skip
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for local_position, index in enumerate(self.sampler):
            if local_position < self.skip:
                continue
            global_position = local_position * self.world_size + self.rank
            yield int(index), sample_seed(self.seed, self.epoch, global_position)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class SeededSamples(Dataset):
    """A dataset read with ``(index, seed)`` keys: the sample's transform runs under its seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        seed_sample(seed)
        return self.dataset[index]
