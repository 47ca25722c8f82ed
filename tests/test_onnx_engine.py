"""deit.optimize on ONNX Runtime (deit.onnx_engine): float32 and int8, and the engine choice.

Tolerances: float32 1e-4 absolute on logits of order 1 (ONNX Runtime fuses and reorders the
sums; it computes the same function). int8: 3 % of the largest float32 logit plus 0.02 (int8
weights per channel and uint8 activations per tensor carry about 1 % relative error per matmul
through the model's few layers). The tests skip where the ``onnx`` extra is absent.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

import deit
from deit import onnx_engine
from deit.optimize import InferenceModel, optimize

from optimize_fixtures import engine_choices_in_a_temporary_folder, pixels  # noqa: F401  (fixtures)
from small_models import build

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("cls", [deit.DeiTForImageClassificationWithTeacher, deit.DeiTForImageClassification])
def test_float32_engine_matches_the_plain_model(cls, pixels):
    plain = build(cls)
    fast = optimize(plain, backend="onnxruntime")
    assert isinstance(fast, onnx_engine.OnnxRuntimeModel)
    with torch.inference_mode():
        expected, got = plain(pixels), fast(pixels)
        assert list(expected.keys()) == list(got.keys())
        for name in expected.keys():
            assert (expected[name] - got[name]).abs().max() < 1e-4, name
        assert (fast(pixels[:1], return_dict=False)[0] - expected.logits[:1]).abs().max() < 1e-4  # another batch size
        # What the graph does not take runs on PyTorch's kernels with the same weights.
        hidden = fast(pixels, output_hidden_states=True).hidden_states
        assert len(hidden) == 3 and (hidden[-1] - plain(pixels, output_hidden_states=True).hidden_states[-1]).abs().max() < 1e-4


def test_int8_is_close_to_float32_and_keeps_the_named_layers_in_float32(pixels, tmp_path):
    import onnx

    plain = build()
    int8 = optimize(plain, dtype="int8", cache_dir=tmp_path)
    with torch.inference_mode():
        expected, got = plain(pixels).logits, int8(pixels).logits
    assert (got - expected).abs().max() < 0.03 * expected.abs().max() + 0.02
    quantized = onnx.load(str(next(tmp_path.glob("*-int8.onnx"))))
    ops = [node.op_type for node in quantized.graph.node]
    assert ops.count("MatMulInteger") == 6 * 2  # q, k, v, projection, fc1, fc2 in each of the 2 blocks
    assert ops.count("MultiHeadAttention") == 2 and "MatMul" not in ops  # attention's products of activations: float32, in its op
    assert "Conv" in ops and "ConvInteger" not in ops  # the patch embedding
    assert not [init.name for init in quantized.graph.initializer if "classifier" in init.name]  # the heads run in PyTorch


def test_int8_refuses_what_it_would_compute_in_another_precision(pixels):
    int8 = optimize(build(), dtype="int8")
    with pytest.raises(ValueError, match="int8 model deit.optimize returns does not take output_hidden_states"):
        int8(pixels, output_hidden_states=True)
    with pytest.raises(ValueError, match="int8 inference runs on ONNX Runtime"):
        optimize(build(), dtype="int8", backend="torch")
    with pytest.raises(TypeError, match="serves the classification models, not DeiTModel"):
        optimize(build(deit.DeiTModel), dtype="int8")


@pytest.fixture
def measured(monkeypatch):
    """The engine choices of optimize(backend="auto") start empty (in memory and in a fresh cache
    folder); every measurement is recorded and picks ONNX Runtime."""
    calls = []

    def pick(candidates):
        calls.append(sorted(candidates))
        return "onnxruntime"

    optimize_module = sys.modules["deit.optimize"]  # (deit.optimize is also the function's name)
    monkeypatch.setattr(optimize_module, "fastest", pick)
    monkeypatch.setattr(optimize_module, "_ENGINE_CHOICES", {})
    return calls


def test_auto_measures_once_and_returns_the_faster_engine(measured):
    assert isinstance(optimize(build()), onnx_engine.OnnxRuntimeModel)
    assert isinstance(optimize(build()), onnx_engine.OnnxRuntimeModel)
    assert measured == [["onnxruntime", "torch"]]  # measured once for this shape and thread count
    # bfloat16 and a bare body stay on PyTorch, unmeasured.
    assert isinstance(optimize(build(), dtype="bf16"), InferenceModel)
    assert type(optimize(build(deit.DeiTModel))) is InferenceModel
    assert len(measured) == 1


def test_auto_keeps_its_choice_for_later_processes_and_builds_only_that_engine(measured, monkeypatch, tmp_path):
    optimize(build())
    choices = tmp_path / "choices" / "engine-choices.json"
    assert choices.exists() and list(json.loads(choices.read_text()).values()) == ["onnxruntime"]
    monkeypatch.setattr(sys.modules["deit.optimize"], "_ENGINE_CHOICES", {})  # a new process
    built = []
    monkeypatch.setattr(sys.modules["deit.optimize"], "InferenceModel", lambda *args: built.append(args))
    assert isinstance(optimize(build()), onnx_engine.OnnxRuntimeModel)
    assert len(measured) == 1 and not built  # read back: neither measured again nor the PyTorch engine built
    # Another thread count (or CPU, versions, model shape) is measured on its own.
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    optimize(build())
    assert len(measured) == 2 and len(json.loads(choices.read_text())) == 2
    # cache_dir= keeps the choices there; an unreadable file is measured again and rewritten.
    monkeypatch.setattr(sys.modules["deit.optimize"], "_ENGINE_CHOICES", {})  # a new process
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "engine-choices.json").write_text("{not json")
    optimize(build(), cache_dir=tmp_path / "mine")
    assert len(measured) == 3 and len(json.loads((tmp_path / "mine" / "engine-choices.json").read_text())) == 1


def test_cache_dir_reuses_the_onnx_file(tmp_path, monkeypatch, pixels):
    plain = build()
    first = optimize(plain, backend="onnxruntime", cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".onnx")
    def export_again(*args):
        raise RuntimeError("exported again")

    monkeypatch.setattr(onnx_engine, "_export", export_again)
    second = optimize(plain, backend="onnxruntime", cache_dir=tmp_path)
    with torch.inference_mode():
        assert torch.equal(first(pixels).logits, second(pixels).logits)
    changed = build()
    with torch.no_grad():
        changed.cls_classifier.bias.add_(1.0)
    with pytest.raises(RuntimeError, match="exported again"):  # other weights, another file
        optimize(changed, backend="onnxruntime", cache_dir=tmp_path)


def test_without_onnxruntime_auto_stays_on_pytorch_and_int8_says_what_to_install(monkeypatch):
    monkeypatch.setattr(onnx_engine, "onnxruntime_available", lambda: False)
    assert isinstance(optimize(build()), InferenceModel) and not isinstance(optimize(build()), onnx_engine.OnnxRuntimeModel)
    with pytest.raises(ImportError, match=r"pip install 'deit\[onnx\]'"):
        optimize(build(), dtype="int8")
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnxruntime"):
        optimize(build(), backend="ort")
