"""ONNX export (checked with onnxruntime) and torch.export of the models."""

from __future__ import annotations

import json

import matplotlib.cbook
import pytest
import torch
from PIL import Image

import deit
from deit.cli import main as cli
from deit.export import GraphModule, compare_onnx, export_onnx, export_program, labels_from_metadata, onnx_metadata, processor_from_metadata

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ATOL = 1e-4
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=5)


def build(cls):
    torch.manual_seed(0)
    config_cls = deit.ViTConfig if cls.__name__.startswith("ViT") else deit.DeiTConfig
    return cls(config_cls(**SMALL)).eval()


def test_onnx_matches_pytorch_for_batch_1_and_5_from_one_file(tmp_path):
    model = build(deit.DeiTForImageClassificationWithTeacher)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # weights inside, no side files

    graph = onnx.load(str(path))
    (pixel_values,) = graph.graph.input
    # Every head by name, the first axis of the input and of every output named "batch", not
    # a symbol of the exporter's (s99) (issue 24, item 10).
    assert [o.name for o in graph.graph.output] == ["logits", "cls_logits", "distillation_logits"]
    for value in (pixel_values, *graph.graph.output):
        batch_axis = value.type.tensor_type.shape.dim[0]
        assert batch_axis.dim_param == "batch" and not batch_axis.dim_value, value.name

    differences = compare_onnx(model, path, batch_sizes=(1, 5))
    assert set(differences) == {"logits", "cls_logits", "distillation_logits"}
    assert max(differences.values()) < ATOL


def test_onnx_metadata_reads_back_in_onnxruntime(tmp_path):
    """Class names, image size, mean/std and the resize rule travel in the file (issue 24, item 10)."""
    import onnxruntime

    model = build(deit.DeiTForImageClassificationWithTeacher)
    model.config.id2label = {i: name for i, name in enumerate(["cat", "dog", "eel", "fox", "gnu"])}
    processor = deit.DeiTImageProcessor(size={"shortest_edge": 37}, crop_size=32, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 0.75])
    path = export_onnx(model, tmp_path / "model.onnx", metadata=onnx_metadata(model, processor))

    metadata = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert labels_from_metadata(metadata) == model.config.id2label
    assert json.loads(metadata["image_mean"]) == [0.5, 0.5, 0.5] and json.loads(metadata["image_std"]) == [0.25, 0.5, 0.75]
    assert metadata["image_size"] == "32" and metadata["deit_model_class"] == "DeiTForImageClassificationWithTeacher"
    assert metadata["resize"].startswith("resize shortest edge to 37 (bicubic), then centre crop 32x32, then rescale by 1/255")
    assert set(json.loads(metadata["outputs"])) == {"logits", "cls_logits", "distillation_logits"}
    restored = processor_from_metadata(metadata)
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    assert torch.equal(restored(photo, return_tensors="pt")["pixel_values"], processor(photo, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize("cls", [deit.ViTForImageClassification, deit.DeiTModel, deit.DeiTForMaskedImageModeling])
def test_onnx_of_other_model_classes(tmp_path, cls):
    model = build(cls)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == GraphModule(model).names
    assert max(compare_onnx(model, path, batch_sizes=(1, 3)).values()) < ATOL


@pytest.mark.parametrize("cls", [deit.DeiTForImageClassificationWithTeacher, deit.ViTForImageClassification])
def test_models_are_torch_exportable_with_a_dynamic_batch(cls):
    model = build(cls)
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,), kwargs={"return_dict": False}, dynamic_shapes=({0: batch}, None))
    for size in (1, 4):
        y = torch.randn(size, 3, 32, 32)
        with torch.no_grad():
            exported_logits = program.module()(y, return_dict=False)[0]  # logits come first in the tuple
            assert float((exported_logits - model(y).logits).abs().max()) < ATOL


def test_export_command_writes_onnx_and_pt2(tmp_path, capsys):
    model = build(deit.DeiTForImageClassificationWithTeacher)
    model.save_pretrained(tmp_path / "model")
    onnx_path, pt2_path = tmp_path / "out.onnx", tmp_path / "out.pt2"
    assert cli(["export", str(tmp_path / "model"), "--onnx", str(onnx_path), "--pt2", str(pt2_path)]) == 0
    out = capsys.readouterr().out
    assert "on batches of 1 and 5, largest absolute difference: logits " in out and "distillation_logits " in out

    program = torch.export.load(str(pt2_path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, cls_logits, distillation_logits = program.module()(x)
        expected = model(x)
        assert float((logits - expected.logits).abs().max()) < ATOL
        assert float((cls_logits - expected.cls_logits).abs().max()) < ATOL
        assert float((distillation_logits - expected.distillation_logits).abs().max()) < ATOL


def test_export_command_needs_an_output(tmp_path, capsys):
    build(deit.DeiTModel).save_pretrained(tmp_path / "model")
    assert cli(["export", str(tmp_path / "model")]) == 2
    assert "--onnx" in capsys.readouterr().err


def test_export_program_is_reused_by_onnx():
    model = build(deit.ViTModel)
    program = export_program(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        hidden, pooled = program.module()(x)
        reference = model(x)
        assert float((hidden - reference.last_hidden_state).abs().max()) < ATOL
        assert float((pooled - reference.pooler_output).abs().max()) < ATOL
