"""Auto classes: pick the right model class for a checkpoint from its configuration."""

from __future__ import annotations

import os
from typing import Any

from .config import DeiTConfig
from .modeling import MODEL_CLASSES, DeiTPreTrainedModel, model_init_arguments

# What each task means for a DeiT (distilled) and a ViT (plain) checkpoint.
_TASK_CLASSES = {
    "image-classification": {"deit": "DeiTForImageClassificationWithTeacher", "vit": "ViTForImageClassification"},
    "base": {"deit": "DeiTModel", "vit": "ViTModel"},
    "masked-image-modeling": {"deit": "DeiTForMaskedImageModeling", "vit": "ViTForMaskedImageModeling"},
}
_TASK_OF_ARCHITECTURE = {
    "DeiTForImageClassification": "image-classification",
    "DeiTForImageClassificationWithTeacher": "image-classification",
    "ViTForImageClassification": "image-classification",
}


def model_class_for(config: DeiTConfig | None, task: str | None) -> type[DeiTPreTrainedModel]:
    """The class a checkpoint with ``config`` should be loaded into for ``task``.

    ``task=None`` means the class the checkpoint was saved from (its ``architectures`` entry),
    falling back to image classification when the config names none of ours.
    """
    model_type = config.model_type if config is not None else "deit"
    if config is not None and config.architectures:
        arch = config.architectures[0]
        if arch in MODEL_CLASSES and (task is None or _TASK_OF_ARCHITECTURE.get(arch) == task):
            return MODEL_CLASSES[arch]
    return MODEL_CLASSES[_TASK_CLASSES[task or "image-classification"][model_type]]


class _AutoModel:
    task: str | None = "base"

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated; use {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> DeiTPreTrainedModel:
        """Load any supported checkpoint (Hugging Face, timm or original DeiT layout; folder, file or
        Hub name) into the class its configuration calls for; keyword arguments as for
        :meth:`DeiTPreTrainedModel.from_pretrained`."""
        from .checkpoint import load_pretrained

        # The loader settles the configuration (config.json, or one inferred from timm weights) and
        # asks class_for_config which class to build, so the file is read once.
        return load_pretrained(cls, name_or_path, **kwargs)

    @classmethod
    def init_arguments(cls) -> frozenset[str]:
        return model_init_arguments()

    @classmethod
    def class_for_config(cls, config: DeiTConfig) -> type[DeiTPreTrainedModel]:
        return model_class_for(config, cls.task)

    @classmethod
    def from_config(cls, config: DeiTConfig) -> DeiTPreTrainedModel:
        return model_class_for(config, cls.task)(config)


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForImageClassification(_AutoModel):
    """Distilled checkpoints load with both heads (averaged prediction) unless saved otherwise."""

    task = "image-classification"


class AutoModelForMaskedImageModeling(_AutoModel):
    task = "masked-image-modeling"


class AutoModelAsSaved(_AutoModel):
    """The class the checkpoint was saved from (``architectures`` in its config); conversion uses it
    so that a bare body, a masked-image-modeling model or a one-head classifier stays what it is."""

    task = None
