"""The class-balanced subsets of ``deit demo --quick`` and the benchmark's low-data regime; the demo's
convnet teacher trained by the engine."""

from __future__ import annotations

import pytest
import torch
from fit_helpers import one_thread  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file

from deit.demo.recipe import (
    TEACHER_EPOCH_IMAGES, ClassBalancedSubset, load_data, passes_per_epoch, student_config, train_teacher,
)
from deit.train.data import Mnist5k


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


def test_teacher_passes_are_grouped_into_epochs_without_changing_their_number():
    assert passes_per_epoch(25, 400) == 5 and passes_per_epoch(100, 100) == 20 and passes_per_epoch(10, 1000) == 2
    assert passes_per_epoch(10, 4000) == 1 and passes_per_epoch(7, 400) == 1 and passes_per_epoch(1, 30) == 1
    for passes, images in [(25, 400), (100, 100), (10, 1000), (12, 300), (9, 5000)]:
        group = passes_per_epoch(passes, images)
        assert passes % group == 0 and (group == 1 or group * images <= TEACHER_EPOCH_IMAGES)


def test_the_demo_teacher_learns_in_the_engine(tmp_path):
    train_set, val_set = load_data(student_config("unused", "none"))
    labelled = ClassBalancedSubset(train_set, 13)  # 130 images: 2 steps of 64 per pass
    run = train_teacher(labelled, ClassBalancedSubset(val_set, 5), num_classes=10, output=str(tmp_path / "teacher"), epochs=6)
    assert len(run.step_losses) == 780 // 64  # six passes of 130 images grouped into one epoch of the run
    assert sum(run.step_losses[-3:]) < 0.8 * sum(run.step_losses[:3])
    assert not run.model.training and 0 <= run.acc1 <= 100
    saved = load_file(tmp_path / "teacher" / "last" / "model.safetensors")
    assert all(torch.equal(saved[key], value) for key, value in run.model.state_dict().items())
