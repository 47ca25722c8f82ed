"""The model a run trains: a fresh preset, or a checkpoint fine-tuned to a new label set and resolution."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_state_dict_into
from ..config import PRESETS, DeiTConfig, config_from_dict
from ..modeling import DeiTForImageClassificationWithTeacher, DeiTPreTrainedModel, ViTForImageClassification
from .recipe import TrainConfig


def _student_class(config: DeiTConfig) -> type[DeiTPreTrainedModel]:
    # A distilled (deit) model always trains both heads; a plain ViT has only the CLS head.
    return DeiTForImageClassificationWithTeacher if config.model_type == "deit" else ViTForImageClassification


def _architecture_overrides(train: TrainConfig) -> dict:
    overrides: dict = {}
    if train.hidden_size is not None:
        overrides["hidden_size"] = train.hidden_size
        overrides["intermediate_size"] = int(round(train.hidden_size * train.mlp_ratio))
    if train.depth is not None:
        overrides["num_hidden_layers"] = train.depth
    if train.heads is not None:
        overrides["num_attention_heads"] = train.heads
    if train.patch_size is not None:
        overrides["patch_size"] = train.patch_size
        overrides["encoder_stride"] = train.patch_size
    return overrides


def is_preset(name: str) -> bool:
    return not Path(name).exists() and name.split("/")[-1] in PRESETS


def student_image_size(train: TrainConfig) -> int:
    """The input resolution of the student, known before the model (and the data) is built."""
    if train.image_size is not None:
        return train.image_size
    if is_preset(train.model):
        return PRESETS[train.model.split("/")[-1]]["image_size"]
    # A checkpoint's resolution is in its config.json, or (timm / original weights) only in the
    # tensors' shapes: the loader settles both, so ask it rather than a second reader.
    return load_source_model(train.model).config.image_size


def load_source_model(name_or_path: str) -> DeiTPreTrainedModel:
    from ..auto import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(name_or_path, torch_dtype=torch.float32)


def build_student(train: TrainConfig, id2label: dict[int, str]) -> DeiTPreTrainedModel:
    """A preset name gives a freshly initialised model; anything else is a checkpoint to fine-tune.

    Fine-tuning keeps the body, re-initialises the heads when the label set differs, and
    resamples the position embeddings (bicubic) when ``train.image_size`` differs.
    """
    labels = {"num_labels": len(id2label), "id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
    architecture = _architecture_overrides(train)
    if train.image_size is not None:
        architecture["image_size"] = train.image_size
    if is_preset(train.model):
        config = DeiTConfig.from_preset(train.model, drop_path_rate=train.drop_path, **architecture, **labels)
        return _student_class(config)(config)

    if set(architecture) - {"image_size"}:
        raise ValueError(
            f"--hidden-size/--depth/--heads/--patch-size build a fresh model from a preset; {train.model} is a checkpoint "
            "whose architecture is fixed (only --image-size may change)"
        )
    source = load_source_model(train.model)
    config = config_from_dict({**source.config.to_dict(), **architecture, **labels, "drop_path_rate": train.drop_path})
    student = _student_class(config)(config)

    state = source.state_dict()
    prefix = source.base_model_prefix + "."
    if source.config.id2label != config.id2label:
        state = {k: v for k, v in state.items() if k.startswith(prefix)}  # new label set: fresh heads
    if config.image_size != source.config.image_size:
        grid = config.image_size // config.patch_size
        with torch.no_grad():
            state[prefix + "embeddings.position_embeddings"] = source.backbone.embeddings.interpolated_position_embeddings(grid, grid).clone()
    load_state_dict_into(student, state, source=train.model)
    return student
