"""The class-balanced subsets of ``deit demo --quick`` and the benchmark's low-data regime."""

from __future__ import annotations

import pytest

from deit.train.data import Mnist5k
from deit.demo.recipe import ClassBalancedSubset


def test_subset_takes_the_first_images_of_every_class_in_order():
    full = Mnist5k("train")
    subset = ClassBalancedSubset(full, 3)
    expected = [i for c in range(10) for i in [j for j, t in enumerate(full.targets) if t == c][:3]]
    assert sorted(subset.indices) == sorted(expected)
    assert list(subset.indices) == sorted(subset.indices)  # the data set's order is kept
    assert subset.classes == full.classes
    assert sorted(subset.targets) == sorted(list(range(10)) * 3)
    image, label = subset[0]
    assert label == full.targets[subset.indices[0]]
    assert ClassBalancedSubset(full, 3).indices == subset.indices  # fixed: nothing random


def test_subset_larger_than_a_class_is_an_error():
    with pytest.raises(ValueError, match=r"class '0' has only 100 labelled image\(s\), fewer than the 101 per class"):
        ClassBalancedSubset(Mnist5k("val"), 101)
