"""The Keras models against our PyTorch classes on the same weights: every class and output, on
the current Keras backend (TensorFlow here; JAX through test_keras_jax.py). Max abs difference
<= 1e-4 in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from keras_backend import import_deit_keras
from small_models import SMALL

import deit
from deit.model_rules import ACTIVATION_FUNCTIONS

dk = import_deit_keras()
import keras  # noqa: E402  (after deit.keras: see deit.tensorflow_import)
from deit.keras.layers import activation  # noqa: E402

ATOL = 1e-4
PAIRS = [
    (deit.DeiTModel, dk.TFDeiTModel),
    (deit.DeiTForImageClassification, dk.TFDeiTForImageClassification),
    (deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher),
    (deit.DeiTForMaskedImageModeling, dk.TFDeiTForMaskedImageModeling),
]


def twin(torch_cls, keras_cls, body_kwargs: dict | None = None, **config):
    """A PyTorch model with non-zero weights everywhere (position embeddings included) and its Keras twin."""
    torch.manual_seed(0)
    config = deit.DeiTConfig(**{**SMALL, "encoder_stride": SMALL["patch_size"], **config})
    model = torch_cls(config, **(body_kwargs or {}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    keras_model = keras_cls(config, **(body_kwargs or {}))
    keras_model.load_state_dict(model.state_dict())
    return model.eval(), keras_model


def assert_close(ours, reference, what: str) -> None:
    ours, reference = np.asarray(ours), reference.detach().numpy()
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} vs {reference.shape}"
    diff = float(np.abs(ours - reference).max())
    assert diff <= ATOL, f"{what}: max abs difference {diff:.2e} > {ATOL}"


def assert_outputs_close(ours, reference) -> None:
    assert ours.keys() == reference.keys()
    for key in reference.keys():
        if key in ("hidden_states", "attentions"):
            assert len(ours[key]) == len(reference[key])
            for i, (a, b) in enumerate(zip(ours[key], reference[key])):
                assert_close(a, b, f"{key}[{i}]")
        else:
            assert_close(ours[key], reference[key], key)


def inputs(height: int = 32, width: int = 32, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.rand(batch, (height // 8) * (width // 8), generator=g) < 0.5
    return pixels, mask


def call_kwargs(torch_cls, mask) -> tuple[dict, dict]:
    if torch_cls is deit.DeiTModel or torch_cls is deit.DeiTForMaskedImageModeling:
        return {"bool_masked_pos": mask}, {"bool_masked_pos": mask.numpy()}
    return {}, {}


@pytest.mark.parametrize("torch_cls, keras_cls", PAIRS, ids=lambda c: c.__name__)
def test_every_output_matches_pytorch(torch_cls, keras_cls):
    # The bare body is built with a mask token here, so that bool_masked_pos is exercised too.
    model, keras_model = twin(torch_cls, keras_cls, {"use_mask_token": True} if torch_cls is deit.DeiTModel else None)
    pixels, mask = inputs()
    torch_extra, keras_extra = call_kwargs(torch_cls, mask)
    with torch.no_grad():
        expected = model(pixels, output_hidden_states=True, output_attentions=True, **torch_extra)
    got = keras_model(pixels.numpy(), output_hidden_states=True, output_attentions=True, **keras_extra)
    assert_outputs_close(got, expected)
    if torch_cls is deit.DeiTModel:
        assert got.pooler_output is not None
    if torch_cls is deit.DeiTForMaskedImageModeling:
        assert got.loss is not None


def test_head_mask_matches_pytorch():
    model, keras_model = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher)
    pixels, _ = inputs()
    for head_mask in (torch.tensor([1.0, 0.0, 1.0, 0.5]), torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])):
        with torch.no_grad():
            expected = model(pixels, head_mask=head_mask, output_attentions=True)
            unmasked = model(pixels).logits
        got = keras_model(pixels.numpy(), head_mask=head_mask.numpy(), output_attentions=True)
        assert (expected.logits - unmasked).abs().max() > 1e-3  # the mask changes the result
        assert_outputs_close(got, expected)


@pytest.mark.parametrize("torch_cls, keras_cls", [PAIRS[2], PAIRS[3]], ids=lambda c: c.__name__)
def test_interpolate_pos_encoding_matches_pytorch(torch_cls, keras_cls):
    model, keras_model = twin(torch_cls, keras_cls)
    assert float(model.deit.embeddings.position_embeddings.detach().abs().min()) > 0  # the resampling is exercised on non-zero values
    pixels, mask = inputs(height=48, width=40)  # a 6x5 patch grid from the native 4x4
    torch_extra, keras_extra = call_kwargs(torch_cls, mask)
    with torch.no_grad():
        expected = model(pixels, interpolate_pos_encoding=True, output_hidden_states=True, **torch_extra)
    got = keras_model(pixels.numpy(), interpolate_pos_encoding=True, output_hidden_states=True, **keras_extra)
    assert_outputs_close(got, expected)


@pytest.mark.parametrize("labels_kind", ["index", "soft"])
def test_classification_losses_match_pytorch(labels_kind):
    pixels, _ = inputs()
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 3, 4]) if labels_kind == "index" else torch.softmax(torch.randn(3, 5, generator=g), dim=-1)
    model, keras_model = twin(deit.DeiTForImageClassification, dk.TFDeiTForImageClassification,
                              problem_type=None if labels_kind == "index" else "multi_label_classification")
    with torch.no_grad():
        expected = model(pixels, labels=labels)
    assert_outputs_close(keras_model(pixels.numpy(), labels=labels.numpy()), expected)


@pytest.mark.parametrize("distillation_type", ["hard", "soft", "none", None])
def test_with_teacher_losses_match_pytorch(distillation_type):
    """With labels only (mean of both heads' losses) and with labels and teacher logits (the DeiT loss)."""
    model, keras_model = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher)
    pixels, _ = inputs()
    labels = torch.tensor([1, 0, 4])
    teacher = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)) * 3
    if distillation_type is None:
        torch_kwargs, keras_kwargs = {}, {}
    else:
        torch_kwargs = dict(teacher_logits=teacher, distillation_type=distillation_type, distillation_alpha=0.3, distillation_tau=2.0)
        keras_kwargs = {**torch_kwargs, "teacher_logits": teacher.numpy()}
    with torch.no_grad():
        expected = model(pixels, labels=labels, **torch_kwargs)
    assert_outputs_close(keras_model(pixels.numpy(), labels=labels.numpy(), **keras_kwargs), expected)


def test_tuple_outputs_and_input_errors():
    model, keras_model = twin(deit.DeiTForImageClassificationWithTeacher, dk.TFDeiTForImageClassificationWithTeacher)
    pixels, _ = inputs()
    with torch.no_grad():
        expected = model(pixels, return_dict=False)
    got = keras_model(pixels.numpy(), return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert_close(a, b, "tuple element")
    with pytest.raises(ValueError, match="num_channels=3"):
        keras_model(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        keras_model(np.zeros((1, 3, 40, 32), np.float32))
    with pytest.raises(ValueError, match="without labels"):
        keras_model(pixels.numpy(), teacher_logits=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="no mask token"):
        dk.TFDeiTModel(model.config)(pixels.numpy(), bool_masked_pos=np.zeros((3, 16), bool))


@pytest.mark.parametrize("name", sorted(ACTIVATION_FUNCTIONS))
def test_every_activation_name_matches_pytorch(name):
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    got = keras.ops.convert_to_numpy(activation(name)(keras.ops.convert_to_tensor(x)))
    expected = deit.modeling.activation(name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _message(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    return str(err.value)


def test_input_errors_are_the_pytorch_messages():
    """Both backends check with deit.model_rules: the same message, word for word."""
    model, keras_model = twin(deit.DeiTForMaskedImageModeling, dk.TFDeiTForMaskedImageModeling)
    bad_inputs = [
        dict(pixel_values=np.zeros((1, 1, 32, 32), np.float32)),
        dict(pixel_values=np.zeros((1, 3, 40, 32), np.float32)),
        dict(pixel_values=np.zeros((1, 3, 4, 4), np.float32), interpolate_pos_encoding=True),
        dict(pixel_values=np.zeros((2, 3, 32, 32), np.float32), bool_masked_pos=np.zeros((2, 15), bool)),
        dict(pixel_values=np.zeros((1, 3, 32, 32), np.float32), head_mask=np.ones((3,), np.float32)),
    ]
    for kwargs in bad_inputs:
        torch_kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        # Keras wraps an error raised in call() in its own text around the original message.
        assert _message(lambda: model(**torch_kwargs)) in _message(lambda: keras_model(**kwargs)), kwargs


@pytest.mark.parametrize("rates", [dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3), dict(drop_path_rate=0.5)],
                         ids=["dropout", "drop_path"])
def test_dropout_only_in_training(rates):
    # Fixed seeds, and 16 samples: with 3, the one drop-path layer at rate 0.5 drew the same 6 keep/drop
    # coins in both training passes once in 64 runs, so the two outputs were equal and the test failed.
    keras.utils.set_random_seed(0)
    model, keras_model = twin(deit.DeiTForImageClassification, dk.TFDeiTForImageClassification, **rates)
    pixels, _ = inputs(batch=16)
    with torch.no_grad():
        assert_close(keras_model(pixels.numpy()).logits, model(pixels).logits, "inference logits")
    inference = [np.asarray(keras_model(pixels.numpy()).logits) for _ in range(2)]
    training = [np.asarray(keras_model(pixels.numpy(), training=True).logits) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert np.abs(training[0] - training[1]).max() > 1e-3
    assert np.abs(training[0] - inference[0]).max() > 1e-3
