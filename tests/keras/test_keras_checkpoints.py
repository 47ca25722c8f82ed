"""Weights between the Keras and PyTorch classes: save/load round trips both ways, timm and
original checkpoints through the same loader, transformers reading what Keras saved, and the
lazy import (``import deit`` imports no Keras)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from keras_backend import import_deit_keras
from test_keras_parity import assert_close, inputs, twin

import deit
from deit.checkpoint import save_timm

dk = import_deit_keras()


def test_keras_save_then_pytorch_and_transformers_load(tmp_path):
    model, keras_model = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher)
    pixels, _ = inputs()
    keras_logits = keras_model(pixels.numpy()).logits
    keras_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["DeiTForImageClassificationWithTeacher"]

    ours = deit.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path)
    transformers = pytest.importorskip("transformers")
    reference = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_close(keras_logits, ours(pixels).logits, "PyTorch load of the Keras save")
        assert_close(keras_logits, reference(pixels).logits, "transformers load of the Keras save")


@pytest.mark.parametrize("torch_cls, keras_cls", [
    (deit.DeiTModel, dk.TFDeiTModel), (deit.DeiTForImageClassification, dk.TFDeiTForImageClassification),
    (deit.DeiTForMaskedImageModeling, dk.TFDeiTForMaskedImageModeling),
], ids=lambda c: c.__name__)
def test_pytorch_save_then_keras_load(tmp_path, torch_cls, keras_cls):
    model, _ = twin(torch_cls, keras_cls)
    model.save_pretrained(tmp_path)
    loaded = keras_cls.from_pretrained(tmp_path)
    assert isinstance(loaded, keras_cls)
    pixels, _ = inputs()
    with torch.no_grad():
        expected = model(pixels)
    got = loaded(pixels.numpy())
    key = "reconstruction" if torch_cls is deit.DeiTForMaskedImageModeling else ("pooler_output" if torch_cls is deit.DeiTModel else "logits")
    assert_close(got[key], expected[key], key)
    # And back: the Keras save of what it loaded holds the same tensors as the PyTorch save.
    loaded.save_pretrained(tmp_path / "again")
    again = torch_cls.from_pretrained(tmp_path / "again").state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=0)


def test_head_checkpoint_into_bare_keras_body(tmp_path):
    """The PyTorch loader's prefix handling: a classifier checkpoint loads into TFDeiTModel."""
    model, _ = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher)
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="pooler"):  # the body's pooler is not in a head checkpoint
        body = dk.TFDeiTModel.from_pretrained(tmp_path)
    pixels, _ = inputs()
    with torch.no_grad():
        expected = model.deit(pixels).last_hidden_state
    assert_close(body(pixels.numpy()).last_hidden_state, expected, "last_hidden_state")


@pytest.mark.parametrize("wrapping", ["timm", "original"])
def test_timm_and_original_checkpoints(tmp_path, wrapping):
    model, _ = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher, layer_norm_eps=1e-6)
    timm_file = tmp_path / "timm.safetensors"
    save_timm(model, timm_file)
    if wrapping == "original":  # the authors' .pth: timm names inside {"model": ...}
        from safetensors.torch import load_file

        path = tmp_path / "deit_small_checkpoint.pth"
        torch.save({"model": load_file(str(timm_file)), "epoch": 3}, path)
    else:
        path = timm_file
    heads = model.config.num_attention_heads  # not in timm weights; a 64-wide model is no released DeiT
    keras_model = dk.TFDeiTForImageClassificationWithTeacher.from_pretrained(path, num_attention_heads=heads)
    ours = deit.DeiTForImageClassificationWithTeacher.from_pretrained(path, num_attention_heads=heads)
    assert keras_model.config == ours.config
    pixels, _ = inputs()
    with torch.no_grad():
        assert_close(keras_model(pixels.numpy()).logits, model(pixels).logits, "logits")


def test_from_pretrained_errors(tmp_path):
    model, _ = twin(deit.DeiTForImageClassification, dk.TFDeiTForImageClassification)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="float32"):
        dk.TFDeiTForImageClassification.from_pretrained(tmp_path, torch_dtype="bfloat16")
    with pytest.raises(deit.checkpoint.CheckpointError, match="ignore_mismatched_sizes"):
        dk.TFDeiTForImageClassification.from_pretrained(tmp_path, num_labels=7)
    with pytest.warns(UserWarning, match="re-initialised"):
        resized = dk.TFDeiTForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert tuple(resized(inputs()[0].numpy()).logits.shape) == (3, 7)


def test_import_deit_imports_no_keras():
    code = (
        "import sys, deit\n"
        "deit.DeiTModel, deit.DeiTImageProcessor\n"
        "loaded = [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    src = str(Path(deit.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert deit.TFDeiTForImageClassificationWithTeacher is dk.TFDeiTForImageClassificationWithTeacher
    assert deit.TFDeiTForImageClassificationWithTeacherOutput is dk.TFDeiTForImageClassificationWithTeacherOutput
    with pytest.raises(AttributeError):
        deit.TFNoSuchModel  # noqa: B018
