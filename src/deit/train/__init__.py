"""Training with distillation: data, transforms, samplers, teachers, evaluation and the engine.

Nothing heavy is imported here: ``import deit.train.data`` (etc.) loads only what that module
needs, and ``deit.train.fit`` is looked up in the engine on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "fit":
        from .engine import fit

        return fit
    raise AttributeError(f"module 'deit.train' has no attribute {name!r}")
