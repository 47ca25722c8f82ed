"""ONNX export (checked with onnxruntime) and torch.export of the models."""

from __future__ import annotations

import pytest
import torch

import deit
from deit.cli import main as cli
from deit.export import GraphModule, compare_onnx, export_onnx, export_program

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
    batch_axis = pixel_values.type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic, not fixed

    differences = compare_onnx(model, path, batch_sizes=(1, 5))
    assert set(differences) == {1, 5}
    assert max(differences.values()) < ATOL


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
    assert "batch 1:" in out and "batch 5:" in out

    program = torch.export.load(str(pt2_path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        (logits,) = program.module()(x)
        assert float((logits - model(x).logits).abs().max()) < ATOL


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
