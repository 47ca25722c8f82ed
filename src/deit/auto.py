"""Auto classes: pick the right model class for a checkpoint from its configuration."""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import load_pretrained
from .config import DeiTConfig
from .model_rules import class_name_for_task
from .modeling import MODEL_CLASSES, DeiTPreTrainedModel, model_init_arguments


def model_class_for(config: DeiTConfig | None, task: str | None) -> type[DeiTPreTrainedModel]:
    """The class a checkpoint with ``config`` should be loaded into for ``task``
    (:func:`deit.model_rules.class_name_for_task`).

    ``task=None`` means the class the checkpoint was saved from (its ``architectures`` entry),
    falling back to image classification when the config names none of ours.
    """
    model_type = config.model_type if config is not None else "deit"
    architectures = config.architectures if config is not None else None
    return MODEL_CLASSES[class_name_for_task(model_type, task, architectures)]


class _AutoModel:
    task: str | None = "base"

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated; use {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> DeiTPreTrainedModel:
        """Load any supported checkpoint (Hugging Face, timm or original DeiT layout; folder, file or
        Hub name) into the class its configuration calls for; keyword arguments as for
        :meth:`DeiTPreTrainedModel.from_pretrained`."""
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
