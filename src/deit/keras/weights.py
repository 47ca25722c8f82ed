"""Keras variables under their PyTorch (Hugging Face) names, and the layout changes between them.

A Keras Dense kernel is (in, out) where ``nn.Linear.weight`` is (out, in); a Keras convolution
kernel is HWIO where ``nn.Conv2d.weight`` is OIHW. Everything else has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Per kind: the axes that turn the Keras array into the PyTorch one (None: the same array).
_TO_TORCH_AXES = {"plain": None, "linear": (1, 0), "conv": (3, 2, 0, 1)}
_FROM_TORCH_AXES = {"plain": None, "linear": (1, 0), "conv": (2, 3, 1, 0)}


@dataclass(frozen=True)
class TorchWeight:
    """One Keras variable, the name of its PyTorch parameter, and how their layouts differ."""

    name: str
    variable: Any
    kind: str  # "plain", "linear" or "conv"

    def prefixed(self, prefix: str) -> "TorchWeight":
        return TorchWeight(f"{prefix}.{self.name}", self.variable, self.kind)

    def torch_value(self) -> np.ndarray:
        value = self.variable.value  # the backend's array; TensorFlow's through .numpy() (its __array__ warns on numpy 2)
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        axes = _TO_TORCH_AXES[self.kind]
        return np.ascontiguousarray(value if axes is None else value.transpose(axes))

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = tuple(self.variable.shape)
        axes = _TO_TORCH_AXES[self.kind]
        return shape if axes is None else tuple(shape[a] for a in axes)

    def assign_torch_value(self, value: Any) -> None:
        array = _as_numpy(value)
        if tuple(array.shape) != self.torch_shape:
            raise ValueError(f"{self.name}: expected shape {self.torch_shape}, got {tuple(array.shape)}")
        axes = _FROM_TORCH_AXES[self.kind]
        self.variable.assign(np.ascontiguousarray(array if axes is None else array.transpose(axes)).astype(self.variable.dtype))


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array or a (CPU, any dtype) torch tensor."""
    if hasattr(value, "detach"):  # a torch tensor: bfloat16 has no numpy twin, so go through float32
        value = value.detach().cpu()
        if not value.dtype.is_floating_point:
            return value.numpy()
        return value.float().numpy()
    return np.asarray(value)
