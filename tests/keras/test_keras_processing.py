"""``DeiTImageProcessor(..., return_tensors="tf" | "jax")``: the same values as "np", as an array
the Keras models take."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from keras_backend import import_deit_keras
from PIL import Image

import deit

dk = import_deit_keras()


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.mark.parametrize("kind, module", [("tf", "tensorflow"), ("jax", "jax")])
def test_return_tensors_tf_and_jax(kind, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    processor = deit.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    expected = processor(images(), return_tensors="np")["pixel_values"]
    got = processor(images(), return_tensors=kind)["pixel_values"]
    assert type(got).__module__.split(".")[0] in ({"tf": ("tensorflow",), "jax": ("jax", "jaxlib")}[kind])
    assert str(got.dtype) in ("float32", "<dtype: 'float32'>")
    np.testing.assert_array_equal(np.asarray(got), expected)
    model = dk.TFDeiTForImageClassification(deit.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                             intermediate_size=64, image_size=32, patch_size=8, num_labels=3))
    assert tuple(model(got).logits.shape) == (2, 3)
