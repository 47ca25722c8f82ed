"""Training with distillation: data, transforms, samplers, teachers, evaluation and the engine.

Nothing heavy is imported here: ``import deit.train.data`` (etc.) loads only what that module
needs, and ``deit.train.fit`` / ``pretrain`` / ``PretrainConfig`` are looked up on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "fit":
        from .engine import fit

        return fit
    if name == "pretrain":
        from .pretraining import pretrain

        return pretrain
    if name == "PretrainConfig":
        from .pretrain_recipe import PretrainConfig

        return PretrainConfig
    raise AttributeError(f"module 'deit.train' has no attribute {name!r}")
