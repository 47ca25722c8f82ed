"""The tiny masked-image-modeling set-up shared by the pre-training tests (and their worker scripts)."""

from __future__ import annotations

from fit_helpers import IMAGE_SIZE

from deit.train.pretrain_recipe import PretrainConfig

MASK_PATCH = 8  # 2 x 2 blocks of 4 px patches on 16 px images


def tiny_pretrain_config(output: str, **overrides) -> PretrainConfig:
    """A two-block DeiT on 16x16 inputs, 4 px patches, 8 px mask blocks: a step takes milliseconds."""
    settings = dict(
        model="deit-tiny-distilled-patch16-224", image_size=IMAGE_SIZE, patch_size=4, hidden_size=32, depth=2, heads=2,
        mask_patch_size=MASK_PATCH, epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, num_workers=0, progress=False,
        drop_path=0.0, output=output, seed=0, reconstruction_images=3,
    )
    settings.update(overrides)
    return PretrainConfig(**settings)
