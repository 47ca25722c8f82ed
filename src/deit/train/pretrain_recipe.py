"""``PretrainConfig``: a masked-image-modeling (SimMIM) run, with the SimMIM authors' defaults.

A :class:`~deit.train.recipe.TrainConfig` with other defaults and the mask settings, so that the
one training engine runs it. SimMIM (Xie et al. 2022): AdamW with weight decay 0.05, a base
learning rate of 8e-4 for a global batch of 512 (scaled linearly, as the engine does), warm-up
then cosine, per-step schedule, gradient clipping at 5, stochastic depth 0.1; the only
augmentation is a random resized crop of scale (0.67, 1) and a horizontal flip. No labels, so
no label smoothing, mixup/cutmix, teacher, repeated augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .recipe import TrainConfig


@dataclass
class PretrainConfig(TrainConfig):
    # ---- the SimMIM mask
    mask_patch_size: int = 32  # a multiple of the model's patch size that divides the image size
    mask_ratio: float = 0.6
    reconstruction_images: int = 8  # validation images in each epoch's reconstructions.png

    # ---- the SimMIM recipe (TrainConfig's fields, other defaults)
    epochs: int = 100
    lr: float = 8e-4
    warmup_epochs: float = 10.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    lr_per_step: bool = True
    weight_decay: float = 0.05
    clip_grad: float | None = 5.0
    drop_path: float = 0.1
    scale: tuple[float, float] = (0.67, 1.0)
    hflip: float = 0.5
    aa: str | None = None
    color_jitter: float = 0.0
    reprob: float = 0.0
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    repeated_aug: bool = False
    model_ema: bool = False
    output: str = "runs/pretrain"

    def validate(self) -> None:
        super().validate()
        if self.teacher or self.resolved_distillation_type != "none":
            raise ValueError("masked-image pre-training has no teacher: distill when fine-tuning (deit train --teacher ...)")
        if self.uses_mixup:
            raise ValueError(f"mixup/cutmix mix labels, which pre-training has none of: set mixup=0 and cutmix=0 (got {self.mixup}, {self.cutmix})")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_patch_size < 1 or self.reconstruction_images < 0:
            raise ValueError(f"mask_patch_size must be positive and reconstruction_images not negative, got {self.mask_patch_size}, {self.reconstruction_images}")
