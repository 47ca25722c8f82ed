"""The small DeiT the fast-kernel tests (test_optimize) compare against."""

from __future__ import annotations

import torch

import deit

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=5)


def build(cls=deit.DeiTForImageClassificationWithTeacher, **overrides) -> torch.nn.Module:
    """An eval-mode model with non-trivial biases and tokens (the initialisation zeroes them)."""
    torch.manual_seed(0)
    model = cls(deit.DeiTConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
