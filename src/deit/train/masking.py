"""The SimMIM mask generator (Xie et al. 2022) and the data sets that give each image its mask.

A mask covers square blocks of ``mask_patch_size`` pixels (each block a whole number of model
patches); exactly ``ceil(mask_ratio * blocks)`` of the blocks of every image are masked, chosen
uniformly at random. The model reads the mask per model patch (``bool_masked_pos``, flattened
row by row).

Masks are reproducible by design, like the rest of the engine (``epoch_order``): a training
sample's mask is a function of the sample's seed, which the engine derives from (seed, epoch,
the sample's global position in the epoch). A resumed run and a run on any number of processes
therefore mask every sample as an uninterrupted one-process run does. Validation masks depend on
(seed, image index) only, so every epoch is scored on the same masked pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .epoch_order import SeededSamples

# Streams of SeedSequence entropy, kept apart from the augmentation's and the loop's streams.
_TRAIN_MASK_STREAM = 2 << 20
_VAL_MASK_STREAM = 3 << 20


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(seed)


class MaskGenerator:
    """Random block masks for square ``input_size`` images.

    ``mask_patch_size`` must be a multiple of ``model_patch_size`` and divide ``input_size``;
    ``mask_ratio`` is in (0, 1).
    """

    def __init__(self, input_size: int, mask_patch_size: int = 32, model_patch_size: int = 16, mask_ratio: float = 0.6) -> None:
        for name, value in (("input_size", input_size), ("mask_patch_size", mask_patch_size), ("model_patch_size", model_patch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"the mask patch size ({mask_patch_size}) must be a multiple of the model's patch size ({model_patch_size})"
            )
        if input_size % mask_patch_size:
            raise ValueError(f"the mask patch size ({mask_patch_size}) must divide the image size ({input_size})")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"the mask ratio must be in (0, 1), got {mask_ratio}")
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.blocks_per_side = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.num_blocks = self.blocks_per_side**2
        self.num_masked_blocks = math.ceil(mask_ratio * self.num_blocks)
        if self.num_masked_blocks == self.num_blocks:
            raise ValueError(
                f"a mask ratio of {mask_ratio} masks all {self.num_blocks} block(s) of {mask_patch_size} px in a {input_size} px image: "
                "use smaller mask patches or a lower ratio"
            )

    @property
    def num_patches(self) -> int:
        """Model patches per image: the length of a mask."""
        return (self.blocks_per_side * self.scale) ** 2

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        """One mask: a bool tensor of ``num_patches`` model patches, True where masked."""
        blocks = torch.zeros(self.num_blocks, dtype=torch.bool)
        blocks[torch.randperm(self.num_blocks, generator=generator)[: self.num_masked_blocks]] = True
        grid = blocks.reshape(self.blocks_per_side, self.blocks_per_side)
        return grid.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1).flatten()

    def for_training_sample(self, sample_seed: int) -> torch.Tensor:
        """The mask of the training sample that the engine loads with ``sample_seed``."""
        return self(_generator(sample_seed, _TRAIN_MASK_STREAM))

    def for_validation_image(self, seed: int, index: int) -> torch.Tensor:
        """The mask of validation image ``index``: the same in every epoch."""
        return self(_generator(seed, _VAL_MASK_STREAM, index))

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio})"
        )


class MaskedTrainingSamples(SeededSamples):
    """Training samples read with ``(index, seed)`` keys as ``(image, mask)``; labels are dropped."""

    def __init__(self, dataset: Dataset, masks: MaskGenerator) -> None:
        super().__init__(dataset)
        self.masks = masks

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, torch.Tensor]:
        image = super().__getitem__(key)[0]
        return image, self.masks.for_training_sample(key[1])


class MaskedValidationImages(Dataset):
    """Validation images as ``(image, mask)``, each with its fixed mask; labels are dropped."""

    def __init__(self, dataset: Dataset, masks: MaskGenerator, seed: int) -> None:
        self.dataset = dataset
        self.masks = masks
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        return self.dataset[index][0], self.masks.for_validation_image(self.seed, index)
