"""Samplers for training (repeated augmentation) and for evaluation (sharded, no padding).

Both work on one process and on many (pass ``num_replicas`` / ``rank``, or let them be read from
torch.distributed), and on data sets of any size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["RASampler", "ShardedEvalSampler", "distributed_world"]


def distributed_world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(num_replicas, rank): the given values, else torch.distributed's, else one process."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}")
    return num_replicas, rank


class RASampler(Sampler[int]):
    """Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019), as DeiT trains with it.

    Each epoch: a permutation of the data set (seeded by ``seed + epoch``), each index written
    ``num_repeats`` times in a row, the list wrapped to a multiple of ``num_replicas``, and rank r
    taking every ``num_replicas``-th entry from position r. The copies of one image so land on
    different ranks (on one process: next to each other in the same batch) and each copy gets
    its own random augmentation.

    Epoch length: like the authors', each rank yields ``ceil(dataset_len / num_replicas)``
    indices, the length of a plain (distributed) sampler's epoch, so an epoch costs the same
    compute with or without repetition and is made of ``dataset_len / num_repeats`` distinct
    images shown ``num_repeats`` times; successive epochs draw different images. Unlike the
    authors' sampler this length is not floored to a multiple of 256 (which gave zero samples,
    and a division by zero, for data sets under 256 images). ``full_epoch=True`` instead yields
    every image ``num_repeats`` times per epoch: ``ceil(dataset_len * num_repeats / num_replicas)``
    per rank.

    Resuming mid-epoch is not the sampler's job: :class:`deit.train.epoch_order.EpochOrder`
    skips the batches already trained on, for this sampler or any other.
    """

    def __init__(
        self,
        dataset_len: int,
        num_replicas: int | None = 1,
        rank: int | None = 0,
        shuffle: bool = True,
        num_repeats: int = 3,
        seed: int = 0,
        full_epoch: bool = False,
    ) -> None:
        if dataset_len < 1:
            raise ValueError(f"RASampler needs a non-empty data set, got dataset_len={dataset_len}")
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be at least 1, got {num_repeats}")
        self.dataset_len = int(dataset_len)
        self.num_replicas, self.rank = distributed_world(num_replicas, rank)
        self.shuffle = shuffle
        self.num_repeats = num_repeats
        self.seed = seed
        self.full_epoch = full_epoch
        self.epoch = 0
        # Every rank gets the same count, so no rank waits on another at the end of an epoch.
        self.per_rank_total = math.ceil(self.dataset_len * num_repeats / self.num_replicas)
        self.num_samples = self.per_rank_total if full_epoch else math.ceil(self.dataset_len / self.num_replicas)

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator)
        else:
            order = torch.arange(self.dataset_len)
        repeated = order.repeat_interleave(self.num_repeats).tolist()
        total = self.per_rank_total * self.num_replicas
        # Wrap around (more than once for a set smaller than the number of ranks).
        repeated = (repeated * math.ceil(total / len(repeated)))[:total]
        return repeated[self.rank : total : self.num_replicas][: self.num_samples]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class ShardedEvalSampler(Sampler[int]):
    """Rank r gets indices r, r + R, r + 2R, ... in order: every sample exactly once over all
    ranks, no padding (unlike ``DistributedSampler``, whose padding repeats samples and biases
    accuracy). Ranks may differ by one sample, which is fine for evaluation, where the only
    collective is the final reduction of counts (:func:`deit.train.evaluate.evaluate`).
    """

    def __init__(self, dataset_len: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.dataset_len = int(dataset_len)
        self.num_replicas, self.rank = distributed_world(num_replicas, rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.num_replicas))
