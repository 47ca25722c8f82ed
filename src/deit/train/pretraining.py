"""Masked-image-modeling pre-training (SimMIM): ``pretrain(PretrainConfig(...))``.

The training engine's loop, checkpoints, exact resume, DDP, AMP, EMA, metrics and curves, with
another objective: :class:`PretrainTrainer` overrides the objective's methods of
:class:`~deit.train.engine.Trainer`. Batches are ``(image, mask)``; the loss is the one of
:class:`~deit.modeling.DeiTForMaskedImageModeling` (L1 on the masked pixels, divided by the
masked pixel count and the channels). The result (``last/``, ``best/``: lowest validation
reconstruction loss) is a checkpoint that ``deit train --model DIR`` fine-tunes: the encoder
carries over, the classification heads start fresh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..config import PRESETS
from ..modeling import DeiTForMaskedImageModeling, DeiTPreTrainedModel, ViTForMaskedImageModeling
from .engine import Trainer, TrainResult, run_trainer
from .loaders import RunData, build_run_data
from .masking import MaskGenerator
from .pretrain_recipe import PretrainConfig
from .student import build_model, is_preset, load_source_model

RECONSTRUCTIONS_NAME = "reconstructions.png"


def _masked_image_modeling_class(config: Any) -> type[DeiTPreTrainedModel]:
    return DeiTForMaskedImageModeling if config.model_type == "deit" else ViTForMaskedImageModeling


def model_patch_size(config: PretrainConfig) -> int:
    """The patch size of the model ``config`` builds, known before the model is."""
    if config.patch_size is not None:
        return config.patch_size
    if is_preset(config.model):
        return PRESETS[config.model.split("/")[-1]]["patch_size"]
    return load_source_model(config.model).config.patch_size


class PretrainTrainer(Trainer):
    """One pre-training run: SimMIM's objective in the engine's loop."""

    config: PretrainConfig
    best_metric = "val_loss"
    best_is_max = False
    run_files = (*Trainer.run_files, RECONSTRUCTIONS_NAME)
    model_card_task = "masked-image-modeling"

    def _layer_decay(self) -> float | None:
        # Layer decay is a fine-tuning rule: pre-training takes it only when asked for.
        decay = self.config.layer_decay
        return None if decay == 1.0 else decay

    def _build_data(self, train_set: Any, val_set: Any) -> RunData:
        config = self.config
        self.masks = MaskGenerator(self.image_size, config.mask_patch_size, model_patch_size(config), config.mask_ratio)
        return build_run_data(config, self.ctx, self.image_size, train_set, val_set, masks=self.masks)

    def _build_model(self) -> DeiTPreTrainedModel:
        # The decoder is always new: its stride is the patch size, so that it rebuilds the whole image.
        settings = {"encoder_stride": self.masks.model_patch_size}
        return build_model(self.config, _masked_image_modeling_class, settings, lambda source, config: False, log=self._model_log)

    def _setup_objective(self, teacher: nn.Module | None) -> None:
        if teacher is not None:
            raise ValueError("masked-image pre-training has no teacher: distill when fine-tuning")
        self._log(f"masks: {self.masks}, {self.masks.num_masked_blocks} of {self.masks.num_blocks} blocks per image")

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.train_model(images, bool_masked_pos=masks).loss.float()

    @torch.no_grad()
    def _evaluate_model(self, model: nn.Module) -> dict[str, float]:
        """Mean reconstruction loss per validation image (each with its fixed mask), over all ranks."""
        from .metrics import all_reduce_sum

        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for images, masks in self.data.val_loader:
                with self._autocast():
                    loss = model(images.to(self.device), bool_masked_pos=masks.to(self.device)).loss
                # Every image has the same number of masked pixels: the batch loss is the mean of the images'.
                total += float(loss) * len(images)
                count += len(images)
        finally:
            model.train(was_training)
        total, count = all_reduce_sum([total, count], self.device)
        return {"loss": total / count, "num_samples": int(count)}

    def _write_epoch_files(self) -> None:
        from .reconstruction import save_reconstructions

        count = min(self.config.reconstruction_images, len(self.data.val_set))
        if count == 0:
            return
        # Spread over the validation set (which may be sorted by class), the same images every epoch.
        samples = [self.data.val_loader.dataset[k * len(self.data.val_set) // count] for k in range(count)]
        images = torch.stack([image for image, _ in samples])
        masks = torch.stack([mask for _, mask in samples])
        save_reconstructions(
            self.model, images, masks, self.output_dir / RECONSTRUCTIONS_NAME, mean=self.config.mean, std=self.config.std,
            device=self.device, title=f"epoch {self.position.epoch}: input, masked, reconstruction, reconstruction in the masked patches",
        )


def pretrain(config: PretrainConfig | None = None, *, train_dataset: Any = None, val_dataset: Any = None, **overrides: Any) -> TrainResult:
    """Pre-train a DeiT by masked-image modeling (SimMIM); see :class:`PretrainConfig` for the settings.

    ``pretrain(PretrainConfig(data="mnist5k", ...))`` or ``pretrain(data=..., epochs=...)``.
    ``train_dataset``/``val_dataset`` (items ``(tensor, anything)``, transforms applied) replace
    ``config.data``; labels are never read. Under ``torchrun`` every process calls it and rank 0
    writes the files: ``checkpoint.pt``, ``last/``, ``best/``, ``metrics.jsonl``, ``curves.png``
    and ``reconstructions.png``.
    """
    config = dataclasses.replace(config or PretrainConfig(), **overrides)
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"pretrain expects a PretrainConfig, got {type(config).__name__}")
    return run_trainer(PretrainTrainer, config, train_dataset=train_dataset, val_dataset=val_dataset)
