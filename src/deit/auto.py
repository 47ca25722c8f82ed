"""Auto classes: pick the right model class for a checkpoint from its configuration."""

from __future__ import annotations

import os
from typing import Any

from .config import CONFIG_NAME, DeiTConfig, config_from_dict
from .modeling import MODEL_CLASSES, DeiTPreTrainedModel

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


def _load_config(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> DeiTConfig | None:
    from .hub import resolve_file

    path = resolve_file(name_or_path, CONFIG_NAME, required=False, **hub_kwargs) if not os.path.isfile(name_or_path) else None
    if path is None and os.path.isfile(name_or_path):
        sibling = os.path.join(os.path.dirname(os.path.abspath(name_or_path)), CONFIG_NAME)
        path = sibling if os.path.isfile(sibling) else None
    return config_from_dict(DeiTConfig.from_json_file(path).to_dict()) if path else None


def model_class_for(config: DeiTConfig | None, task: str) -> type[DeiTPreTrainedModel]:
    """The class a checkpoint with ``config`` should be loaded into for ``task``."""
    model_type = config.model_type if config is not None else "deit"
    if config is not None and config.architectures:
        arch = config.architectures[0]
        if arch in MODEL_CLASSES and _TASK_OF_ARCHITECTURE.get(arch) == task:
            return MODEL_CLASSES[arch]
    return MODEL_CLASSES[_TASK_CLASSES[task][model_type]]


class _AutoModel:
    task = "base"

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated; use {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> DeiTPreTrainedModel:
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "local_files_only", "token") if k in kwargs}
        config = kwargs.get("config") or _load_config(name_or_path, **hub_kwargs)
        return model_class_for(config, cls.task).from_pretrained(name_or_path, **kwargs)

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
