"""Class names for checkpoints that carry none.

A timm or original DeiT weights file holds tensors only, and a Hugging Face ``config.json``
may leave ``id2label`` out: such a model's classes read ``LABEL_0``, ``LABEL_1``, ... A
checkpoint with exactly 1000 classes and no names is, in practice, an ImageNet-1k classifier
(every released DeiT and ViT is): its classes get the ImageNet-1k names, taken from
torchvision's weights metadata (shipped inside the torchvision package; nothing is downloaded).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import DeiTConfig

IMAGENET_NUM_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the usual class-id order (``0: "tench"``)."""
    from torchvision.models import ResNet18_Weights

    names = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != IMAGENET_NUM_CLASSES:  # a torchvision that changed its metadata: refuse rather than mislabel
        raise RuntimeError(f"torchvision's ImageNet-1k categories have {len(names)} entries, not {IMAGENET_NUM_CLASSES}")
    return names


def has_placeholder_names(id2label: Mapping[int, str]) -> bool:
    """True when every class is named ``LABEL_<id>`` (the default of a config without names)."""
    return all(name == f"LABEL_{i}" for i, name in id2label.items())


def needs_imagenet_names(config: "DeiTConfig") -> bool:
    """A 1000-class checkpoint whose classes have no names."""
    return config.num_labels == IMAGENET_NUM_CLASSES and has_placeholder_names(config.id2label)


def class_names(config: "DeiTConfig") -> dict[int, str]:
    """The names to show for ``config``'s classes: its own, or the ImageNet-1k names for a
    1000-class checkpoint without names."""
    if needs_imagenet_names(config):
        return dict(enumerate(imagenet_class_names()))
    return dict(config.id2label)
