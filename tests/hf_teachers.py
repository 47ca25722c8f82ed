"""A small random ``transformers`` classifier saved with its own preprocessor config: the ``hf:`` teacher of the tests."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def save_transformers_resnet(folder: str | os.PathLike, labels: Sequence[str], *, mean: Sequence[float] = (0.5, 0.4, 0.3),
                             std: Sequence[float] = (0.2, 0.25, 0.3), size: int = 20) -> torch.nn.Module:
    """A two-stage ``transformers`` ResNet (a few thousand parameters) predicting ``labels``, saved to
    ``folder`` with a preprocessor_config.json of its own mean, std and input size; returned in eval mode."""
    import transformers

    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config).eval()
    model.save_pretrained(folder)
    processor = transformers.ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0, image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(folder)
    return model
