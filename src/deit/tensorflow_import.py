"""Importing TensorFlow into a process that has (or will have) torch."""

from __future__ import annotations

import importlib
import importlib.util


def import_dynamo_before_tensorflow() -> None:
    """With torch's ``triton`` installed, TensorFlow imported before ``torch._dynamo`` makes the later
    dynamo import (``torch.compile``, ``transformers``) crash the interpreter with a segfault;
    importing dynamo first avoids it. Call before the first TensorFlow (or Keras) import."""
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("torch._dynamo")
