"""The TensorFlow SavedModel export: reloaded without our code, its serving signature takes any
batch size and gives the tensors the ONNX export gives (the logits, and each head's of a distilled model)."""

from __future__ import annotations

import numpy as np
import pytest
from keras_backend import import_deit_keras
from test_keras_parity import ATOL, inputs, twin

import deit

dk = import_deit_keras(need="tensorflow")
import tensorflow as tf  # noqa: E402  (after deit.keras: see deit.tensorflow_import)


@pytest.mark.parametrize("torch_cls, keras_cls, names", [
    (deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher, ["logits", "cls_logits", "distillation_logits"]),
    (deit.DeiTModel, dk.TFDeiTModel, ["last_hidden_state", "pooler_output"]),
], ids=["with_teacher", "body"])
def test_saved_model_reload_gives_the_same_outputs_at_any_batch(tmp_path, torch_cls, keras_cls, names):
    _, keras_model = twin(torch_cls, keras_cls)
    path = keras_model.export_saved_model(tmp_path / "saved")
    assert (path / "saved_model.pb").is_file()
    reloaded = tf.saved_model.load(str(path))
    signature = reloaded.signatures["serving_default"]
    assert signature.structured_input_signature[1]["pixel_values"].shape.as_list() == [None, 3, 32, 32]
    for batch in (1, 3):
        pixels = inputs(batch=batch)[0].numpy()
        expected = keras_model(pixels)
        served = reloaded.serve(tf.constant(pixels))
        by_signature = signature(pixel_values=tf.constant(pixels))
        assert sorted(served) == sorted(by_signature) == sorted(names)
        for name in names:
            np.testing.assert_allclose(served[name].numpy(), np.asarray(expected[name]), rtol=0, atol=ATOL)
            np.testing.assert_allclose(by_signature[name].numpy(), np.asarray(expected[name]), rtol=0, atol=ATOL)
    with pytest.raises((ValueError, TypeError)):
        reloaded.serve(tf.zeros((1, 3, 40, 32)))  # the signature's image size
