"""Repeated-augmentation sampler and the sharded evaluation sampler: coverage, equal shares,
determinism, small data sets, one process and many, resuming mid-epoch."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from deit.train.samplers import RASampler, ShardedEvalSampler


def shares(n: int, replicas: int, **kwargs) -> list[list[int]]:
    out = []
    for rank in range(replicas):
        sampler = RASampler(n, num_replicas=replicas, rank=rank, **kwargs)
        sampler.set_epoch(kwargs.get("epoch", 0))
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("n,replicas", [(10, 1), (10, 2), (10, 3), (1, 2), (7, 4), (300, 8)])
def test_full_epoch_covers_every_image_num_repeats_times_with_equal_shares(n, replicas):
    per_rank = shares(n, replicas, full_epoch=True)
    assert {len(s) for s in per_rank} == {math.ceil(3 * n / replicas)}
    counts = Counter(i for s in per_rank for i in s)
    assert set(counts) == set(range(n))
    # Every image 3 times, plus the padding to a multiple of the ranks (fewer entries than ranks).
    assert min(counts.values()) >= 3
    assert sum(c - 3 for c in counts.values()) == replicas * math.ceil(3 * n / replicas) - 3 * n


@pytest.mark.parametrize("n,replicas", [(10, 1), (10, 2), (5, 3), (255, 2), (1000, 4)])
def test_default_epoch_has_the_length_of_a_plain_sampler(n, replicas):
    per_rank = shares(n, replicas)
    assert [len(s) for s in per_rank] == [math.ceil(n / replicas)] * replicas
    assert len(RASampler(n, replicas, 0)) == math.ceil(n / replicas)
    # Each image drawn is shown (about) num_repeats times: n / 3 distinct images per epoch.
    distinct = set(i for s in per_rank for i in s)
    assert math.ceil(n / 3) <= len(distinct) <= math.ceil(n / 3) + 1


def test_one_process_puts_the_copies_next_to_each_other():
    order = list(RASampler(10, 1, 0, num_repeats=3, full_epoch=True))
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 30, 3))
    assert sorted(order[::3]) == list(range(10))


def test_copies_of_an_image_go_to_different_ranks():
    per_rank = shares(12, 3, full_epoch=True)
    for position in range(12):
        assert per_rank[0][position] == per_rank[1][position] == per_rank[2][position]


def test_deterministic_per_seed_and_epoch():
    def epoch(seed: int, e: int) -> list[int]:
        sampler = RASampler(50, 2, 1, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    assert epoch(0, 3) == epoch(0, 3)
    assert epoch(0, 3) != epoch(0, 4)
    assert epoch(0, 3) != epoch(1, 3)
    unshuffled = RASampler(4, 1, 0, shuffle=False, full_epoch=True)
    assert list(unshuffled) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_bad_arguments():
    with pytest.raises(ValueError):
        RASampler(0)
    with pytest.raises(ValueError):
        RASampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        RASampler(10, num_repeats=0)


@pytest.mark.parametrize("n,replicas", [(10, 3), (2, 4), (9, 3)])
def test_sharded_eval_sampler_gives_each_sample_once_without_padding(n, replicas):
    per_rank = [list(ShardedEvalSampler(n, replicas, r)) for r in range(replicas)]
    assert sorted(i for s in per_rank for i in s) == list(range(n))
    assert [len(ShardedEvalSampler(n, replicas, r)) for r in range(replicas)] == [len(s) for s in per_rank]
