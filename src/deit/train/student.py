"""The model a run trains: a fresh preset, or a checkpoint fine-tuned to a new label set and resolution."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """A bare preset name (an architecture, fresh weights). A name with an owner
    (``facebook/deit-tiny-...``) is a Hub repository: its weights are loaded, never replaced by fresh ones."""
    return name in PRESETS and not Path(name).exists()


def starts_from_masked_image_modeling(name: str) -> bool:
    """Whether ``name`` is a local checkpoint saved by masked-image-modeling pre-training (``deit pretrain``)."""
    path = Path(name)
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if is_preset(name) or not path.exists() or not config_file.is_file():
        return False
    import json

    architectures = json.loads(config_file.read_text()).get("architectures") or [""]
    return architectures[0].endswith("ForMaskedImageModeling")


def student_image_size(train: TrainConfig) -> int:
    """The input resolution of the student, known before the model (and the data) is built."""
    if train.image_size is not None:
        return train.image_size
    if is_preset(train.model):
        return PRESETS[train.model]["image_size"]
    # A checkpoint's resolution is in its config.json, or (timm / original weights) only in the
    # tensors' shapes: the loader settles both, so ask it rather than a second reader.
    return load_source_model(train.model).config.image_size


def load_source_model(name_or_path: str) -> DeiTPreTrainedModel:
    from ..auto import AutoModelForImageClassification

    # Only its body and (maybe) heads are taken; build_model tells which tensors are new, so the
    # loader's warnings about this intermediate model would repeat or contradict it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return AutoModelForImageClassification.from_pretrained(name_or_path, torch_dtype=torch.float32)


def build_student(train: TrainConfig, id2label: dict[int, str], log: Callable[[str], None] | None = None) -> DeiTPreTrainedModel:
    """A preset name gives a freshly initialised model; anything else is a checkpoint to fine-tune.

    Fine-tuning keeps the body, re-initialises the heads when the label set differs or the
    checkpoint has none (a masked-image-modeling one, from ``deit pretrain``), and resamples the
    position embeddings (bicubic) when ``train.image_size`` differs. ``log`` is told which
    weights were loaded and which are new.
    """
    labels = {"num_labels": len(id2label), "id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}

    def keeps_heads(source: DeiTPreTrainedModel, config: DeiTConfig) -> bool:
        saved_as = (source.config.architectures or [""])[0]
        return source.config.id2label == config.id2label and not saved_as.endswith("ForMaskedImageModeling")

    return build_model(train, _student_class, labels, keeps_heads, log)


def build_model(
    train: TrainConfig,
    model_class: Callable[[DeiTConfig], type[DeiTPreTrainedModel]],
    settings: dict[str, Any],
    keeps_heads: Callable[[DeiTPreTrainedModel, DeiTConfig], bool],
    log: Callable[[str], None] | None = None,
) -> DeiTPreTrainedModel:
    """The model of a run: ``model_class(config)`` for ``train.model`` with ``settings`` (labels).

    A preset is built fresh. From a checkpoint, the body always carries over and the heads only
    where ``keeps_heads(source, config)``; the rest is initialised and ``log`` says which is which.
    """
    architecture = _architecture_overrides(train)
    if train.image_size is not None:
        architecture["image_size"] = train.image_size
    if is_preset(train.model):
        config = DeiTConfig.from_preset(train.model, drop_path_rate=train.drop_path, **{**architecture, **settings})
        if log is not None:
            log(f"model: {train.model} is an architecture preset: RANDOM initial weights, training from scratch "
                f"(to fine-tune released weights: --model facebook/{train.model} or a local checkpoint)")
        return model_class(config)(config)

    if set(architecture) - {"image_size"}:
        raise ValueError(
            f"--hidden-size/--depth/--heads/--patch-size build a fresh model from a preset; {train.model} is a checkpoint "
            "whose architecture is fixed (only --image-size may change)"
        )
    source = load_source_model(train.model)
    config = config_from_dict({**source.config.to_dict(), **architecture, **settings, "drop_path_rate": train.drop_path})
    model = model_class(config)(config)

    state = source.state_dict()
    prefix = source.base_model_prefix + "."
    if not keeps_heads(source, config):
        state = {k: v for k, v in state.items() if k.startswith(prefix)}  # fresh heads
    if config.image_size != source.config.image_size:
        grid = config.image_size // config.patch_size
        with torch.no_grad():
            state[prefix + "embeddings.position_embeddings"] = source.backbone.embeddings.interpolated_position_embeddings(grid, grid).clone()
    with warnings.catch_warnings():
        if log is not None:  # the line below tells what is new; the loader's warnings would repeat it
            warnings.simplefilter("ignore")
        report = load_state_dict_into(model, state, source=train.model)
    if log is not None:
        new = report["missing_keys"] | {key for key, *_ in report["mismatched_keys"]}
        loaded = [k for k in model.state_dict() if k not in new]
        unused = sorted(report["unexpected_keys"])
        log(f"{type(model).__name__} from {train.model}: loaded {len(loaded)} tensors ({_summary(loaded)}); "
            f"newly initialised {len(new)} ({_summary(sorted(new)) or 'none'})"
            + (f"; not used from the checkpoint: {_summary(unused)}" if unused else ""))
    return model


def _summary(keys: list[str]) -> str:
    """Tensor names with layer numbers and weight/bias folded (``deit.encoder.layer.*.output.dense``)."""
    folded = dict.fromkeys(re.sub(r"\.(weight|bias)$", "", re.sub(r"\.layer\.\d+\.", ".layer.*.", k)) for k in keys)
    return ", ".join(folded)
