"""Importing deit.keras for a test module, or skipping the module when its Keras backend is missing.

The backend is ``KERAS_BACKEND`` (TensorFlow unless set; it is fixed at the first ``import keras``):
the suite runs these tests on TensorFlow in-process, and on JAX in a subprocess (test_keras_jax.py).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import pytest

BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax"}


def backend() -> str:
    return os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def import_deit_keras(need: str | None = None) -> ModuleType:
    """``deit.keras``, or skip the calling module: when the backend's package (or Keras) is not
    installed, or when the module needs another backend (``need``) than the one in use."""
    name = backend()
    if need is not None and name != need:
        pytest.skip(f"needs the {need} Keras backend; KERAS_BACKEND={name}", allow_module_level=True)
    package = BACKEND_PACKAGES.get(name, name)
    for module in (package, "keras"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'deit[tf]' or 'deit[jax]')", allow_module_level=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import deit.keras

    return deit.keras
