"""Checkpoint layouts: detecting them and mapping them to the Hugging Face one.

Only the Hugging Face layout is handled here for now; timm and original-DeiT layouts plug in
through :func:`to_hf_layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .config import DeiTConfig
    from .modeling import DeiTPreTrainedModel

_HF_MARKERS = ("embeddings.patch_embeddings.projection.weight",)


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """"hf" for Hugging Face parameter names; "unknown" otherwise."""
    if any(k.endswith(marker) for k in state_dict for marker in _HF_MARKERS):
        return "hf"
    return "unknown"


def to_hf_layout(state_dict: dict[str, torch.Tensor], source: Path | str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return the state dict in Hugging Face names, and a config inferred from it (or None)."""
    from .checkpoint import CheckpointError

    layout = detect_layout(state_dict)
    if layout == "hf":
        return state_dict, None
    sample = ", ".join(list(state_dict)[:5])
    raise CheckpointError(f"{source}: not a DeiT/ViT checkpoint layout we know (first keys: {sample})")


def class_for(cls: type["DeiTPreTrainedModel"], config: "DeiTConfig") -> type["DeiTPreTrainedModel"]:
    """The class to build for ``config``: ``cls`` itself, or its ViT twin for a ViT config."""
    from . import modeling

    if config.model_type == cls.config_class.model_type:
        return cls
    twin = cls.__name__.replace("DeiT", "ViT") if config.model_type == "vit" else cls.__name__.replace("ViT", "DeiT")
    if twin not in modeling.MODEL_CLASSES:
        raise ValueError(f"{cls.__name__} cannot load a {config.model_type!r} checkpoint (no {twin} class)")
    return modeling.MODEL_CLASSES[twin]
