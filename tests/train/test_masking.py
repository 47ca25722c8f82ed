"""The SimMIM mask generator: exact ratio, block alignment, determinism, validation, DDP split."""

from __future__ import annotations

import math

import pytest
import torch
from fit_helpers import datasets, one_thread  # noqa: F401 (one_thread: autouse fixture)
from pretrain_helpers import tiny_pretrain_config

from deit.train.distributed import DistributedContext
from deit.train.loaders import build_run_data
from deit.train.masking import MaskGenerator


@pytest.mark.parametrize(
    ("input_size", "mask_patch", "model_patch", "ratio"),
    [(224, 32, 16, 0.6), (192, 32, 16, 0.6), (28, 4, 4, 0.6), (28, 14, 7, 0.5), (32, 16, 4, 0.75), (224, 32, 8, 0.4)],
)
def test_every_mask_has_the_exact_ratio_and_whole_blocks(input_size, mask_patch, model_patch, ratio):
    masks = MaskGenerator(input_size, mask_patch, model_patch, ratio)
    blocks = input_size // mask_patch
    scale = mask_patch // model_patch
    expected_blocks = math.ceil(ratio * blocks * blocks)
    for k in range(20):
        mask = masks.for_training_sample(k)
        assert mask.dtype == torch.bool and mask.shape == ((input_size // model_patch) ** 2,)
        grid = mask.reshape(blocks * scale, blocks * scale)
        # Every mask block is all masked or all visible ...
        per_block = grid.reshape(blocks, scale, blocks, scale).permute(0, 2, 1, 3).reshape(blocks, blocks, scale * scale)
        assert bool((per_block.all(-1) | ~per_block.any(-1)).all())
        # ... and exactly ceil(ratio * blocks) of them are masked (SimMIM's count), in every image.
        assert int(per_block.all(-1).sum()) == expected_blocks
        assert int(mask.sum()) == expected_blocks * scale * scale


def test_masks_are_a_function_of_the_sample_seed_and_differ_between_samples():
    masks = MaskGenerator(224, 32, 16, 0.6)
    assert torch.equal(masks.for_training_sample(12345), MaskGenerator(224, 32, 16, 0.6).for_training_sample(12345))
    assert len({tuple(masks.for_training_sample(seed).tolist()) for seed in range(50)}) == 50
    assert torch.equal(masks.for_validation_image(0, 7), masks.for_validation_image(0, 7))
    assert not torch.equal(masks.for_validation_image(0, 7), masks.for_validation_image(1, 7))
    # Over many samples every block is masked about as often as the ratio says (uniform choice).
    counts = torch.stack([masks.for_training_sample(seed) for seed in range(2000)]).float().mean(0)
    assert float(counts.min()) > 0.55 and float(counts.max()) < 0.67  # 30 of 49 = 0.612; 4 sigma ~ 0.044


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((224, 24, 16, 0.6), r"mask patch size \(24\) must be a multiple of the model's patch size \(16\)"),
        ((200, 32, 16, 0.6), r"mask patch size \(32\) must divide the image size \(200\)"),
        ((224, 32, 16, 1.0), r"mask ratio must be in \(0, 1\), got 1.0"),
        ((224, 32, 16, 0.0), r"mask ratio must be in \(0, 1\), got 0.0"),
        ((224, 0, 16, 0.5), r"mask_patch_size must be a positive integer, got 0"),
        ((28, 28, 4, 0.6), r"mask ratio of 0.6 masks all 1 block\(s\) of 28 px in a 28 px image"),
    ],
)
def test_sizes_that_do_not_fit_are_errors_naming_the_values(args, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(*args)


def _loaded(config, train_set, val_set, rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = build_run_data(config, DistributedContext(rank, world_size, rank, torch.device("cpu")), 16, train_set, val_set,
                          masks=MaskGenerator(16, 8, 4, 0.6))
    data.order.set_epoch(1)
    return [pair for images, masks in data.train_loader for pair in zip(images, masks)]


def test_each_rank_masks_its_samples_as_one_process_does(tmp_path):
    """Rank r's local sample p is global sample p * world + r: same image, augmentation and mask."""
    train_set, val_set = datasets()
    config = tiny_pretrain_config(str(tmp_path), batch_size=4)
    alone = _loaded(config, train_set, val_set, 0, 1)
    ranks = [_loaded(config, train_set, val_set, rank, 2) for rank in range(2)]
    assert sum(len(r) for r in ranks) == len(alone)
    for rank, samples in enumerate(ranks):
        for position, (image, mask) in enumerate(samples):
            reference_image, reference_mask = alone[position * 2 + rank]
            assert torch.equal(mask, reference_mask) and torch.equal(image, reference_image)
