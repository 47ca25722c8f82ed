"""deit.model_rules, the rules PyTorch and Keras share, against the references and our classes.

Activations: each config name against ``transformers.activations.ACT2FN`` (``torch.nn.functional.selu``
for "selu", which transformers lacks), max abs 1e-6 in float32.
The model kinds and the class for a config: against the classes themselves and the reference's
semantics (a plain ViT checkpoint asked of the two-headed classifier loads as the one-headed one).
"""

from __future__ import annotations

import pytest
import torch
from small_models import SMALL
from torch import nn

import deit
from deit import model_rules, modeling
from deit.model_rules import ACTIVATION_FUNCTIONS, class_name_for_config, class_name_for_task, exported_names, model_kind, output_names

transformers = pytest.importorskip("transformers")


def test_every_activation_function_has_a_pytorch_module():
    assert set(modeling._ACTIVATION_MODULES) == set(ACTIVATION_FUNCTIONS.values())


@pytest.mark.parametrize("name", sorted(ACTIVATION_FUNCTIONS))
def test_activation_names_compute_what_transformers_computes(name):
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    # transformers has no "selu" (a name Hugging Face configs do not use): torch's function is the reference there.
    reference = ACT2FN[name] if name in ACT2FN else getattr(torch.nn.functional, name)
    torch.testing.assert_close(modeling.activation(name)(x), reference(x), atol=1e-6, rtol=0)


def test_an_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown activation 'gelu_exact'; supported: gelu, gelu_new"):
        modeling.activation("gelu_exact")


@pytest.mark.parametrize("cls", list(modeling.MODEL_CLASSES.values()))
def test_model_kinds_describe_the_classes(cls):
    model = cls(deit.DeiTConfig(**SMALL, encoder_stride=SMALL["patch_size"]))
    kind = model_kind(model)
    assert kind.task in model_rules.TASK_CLASS_NAMES
    for head in kind.heads:
        assert isinstance(getattr(model, head), nn.Linear)
    if kind.heads:
        assert type(model).tokens_read == len(kind.heads)  # the heads read the first tokens, one each
    outputs = model(torch.randn(1, 3, 32, 32))
    assert [name for name in output_names(model)] == [name for name in outputs.keys() if name in kind.outputs]


@pytest.mark.parametrize("cls", list(modeling.MODEL_CLASSES.values()))
def test_exported_names_are_outputs_of_the_forward(cls):
    """What an export returns (ONNX, torch.export, the Keras SavedModel): the main outputs, then the
    distilled classifier's two heads, whose mean is its ``logits``."""
    model = cls(deit.DeiTConfig(**SMALL, encoder_stride=SMALL["patch_size"])).eval()
    outputs = model(torch.randn(1, 3, 32, 32))
    names = exported_names(model)
    assert names[: len(output_names(model))] == output_names(model) and set(names) <= set(outputs.keys())
    if "cls_logits" in names:
        assert names == ["logits", "cls_logits", "distillation_logits"]
        torch.testing.assert_close(outputs.logits, (outputs.cls_logits + outputs.distillation_logits) / 2)
    else:
        assert names == output_names(model)


def test_a_subclass_is_its_base_kind():
    class MyClassifier(deit.DeiTForImageClassificationWithTeacher):
        pass

    assert model_kind(MyClassifier).heads == ("cls_classifier", "distillation_classifier")
    with pytest.raises(ValueError, match="not one of the DeiT/ViT model classes"):
        model_kind(nn.Linear(2, 2))


@pytest.mark.parametrize("name,model_type,expected", [
    ("DeiTModel", "vit", "ViTModel"),
    ("ViTModel", "deit", "DeiTModel"),
    ("DeiTForImageClassification", "vit", "ViTForImageClassification"),
    ("DeiTForImageClassificationWithTeacher", "vit", "ViTForImageClassification"),  # a ViT has no [DIST] token
    ("ViTForImageClassification", "deit", "DeiTForImageClassification"),
    ("DeiTForMaskedImageModeling", "vit", "ViTForMaskedImageModeling"),
    ("DeiTForImageClassificationWithTeacher", "deit", "DeiTForImageClassificationWithTeacher"),
])
def test_the_class_for_a_config(name, model_type, expected):
    assert class_name_for_config(name, model_type) == expected
    config = (deit.ViTConfig if model_type == "vit" else deit.DeiTConfig)(**SMALL)
    assert modeling.MODEL_CLASSES[name].class_for_config(config).__name__ == expected


def test_the_class_for_a_task():
    assert class_name_for_task("deit", "image-classification", None) == "DeiTForImageClassificationWithTeacher"
    assert class_name_for_task("vit", "image-classification", None) == "ViTForImageClassification"
    # The saved class wins when it serves the task; a class of another task does not.
    assert class_name_for_task("deit", "image-classification", ["DeiTForImageClassification"]) == "DeiTForImageClassification"
    assert class_name_for_task("deit", "base", ["DeiTForImageClassification"]) == "DeiTModel"
    assert class_name_for_task("deit", None, ["DeiTForMaskedImageModeling"]) == "DeiTForMaskedImageModeling"
    assert class_name_for_task("deit", None, ["SomeoneElsesModel"]) == "DeiTForImageClassificationWithTeacher"


def test_problem_type_inference():
    config = deit.DeiTConfig(**SMALL)
    assert model_rules.problem_type_for(config, labels_are_integers=True) == "single_label_classification"
    assert model_rules.problem_type_for(config, labels_are_integers=False) == "multi_label_classification"
    assert model_rules.problem_type_for(deit.DeiTConfig(**{**SMALL, "num_labels": 1}), labels_are_integers=True) == "regression"
    config.problem_type = "regression"
    assert model_rules.problem_type_for(config, labels_are_integers=True) == "regression"


def test_the_hf_api_module_knows_no_deit_module():
    """deit.hf_api is generic: the model classes inherit it, it names none of them."""
    from deit import hf_api

    assert issubclass(deit.DeiTForImageClassification, hf_api.PreTrainedModel)
    assert issubclass(modeling.DeiTEncoder, hf_api.CheckpointingEncoder)
    assert not [name for name in vars(hf_api) if name.startswith(("DeiT", "ViT")) and name != "DeiTConfig"]
