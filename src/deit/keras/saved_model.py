"""Exporting a Keras model as a TensorFlow SavedModel with a serving signature.

The ``serve`` endpoint (also the ``serving_default`` signature) takes ``pixel_values`` of shape
(batch, channels, image_size, image_size), float32, on a dynamic batch axis, and returns the
same tensors by name as the ONNX export (:func:`deit.model_rules.exported_names`): ``logits``
for classifiers, and for the distilled classifier also ``cls_logits`` and
``distillation_logits``; ``last_hidden_state`` and ``pooler_output`` for a bare body;
``reconstruction`` for masked image modeling. Needs TensorFlow (``pip install 'deit[tf]'``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras

from ..model_rules import exported_names


def export_saved_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Write ``model`` as a SavedModel folder at ``path`` (replaced whole, never left half-written)."""
    config = model.config
    names = exported_names(model)

    def serve(pixel_values: Any) -> dict[str, Any]:
        outputs = model(pixel_values, training=False)
        return {name: outputs[name] for name in names}

    archive = keras.export.ExportArchive()
    archive.track(model)
    shape = (None, config.num_channels, config.image_size, config.image_size)
    archive.add_endpoint("serve", serve, input_signature=[keras.InputSpec(shape=shape, dtype="float32", name="pixel_values")])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        archive.write_out(str(staging / "model"), verbose=False)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
