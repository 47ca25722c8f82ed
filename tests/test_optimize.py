"""deit.optimize: a frozen inference copy that gives the plain model's outputs.

Tolerances: float32 1e-5 absolute on outputs of order 1 (only the summation order changes);
bfloat16 0.05 absolute against float32 (8-bit mantissa), and one or two bf16 steps against the
same computation written out in plain PyTorch where the test builds that.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import deit
from deit import kernels, probes
from deit.optimize import InferenceModel, optimize

from optimize_fixtures import engine_choices_in_a_temporary_folder, pixels  # noqa: F401  (fixtures)
from small_models import build

pytestmark = pytest.mark.skipif(not probes.fast_kernels_available(), reason="PyTorch build without the oneDNN kernels")


def outputs_match(expected, got, tolerance: float) -> None:
    assert list(expected.keys()) == list(got.keys())
    for name in expected.keys():
        if isinstance(expected[name], tuple):
            for a, b in zip(expected[name], got[name]):
                assert (a.float() - b.float()).abs().max() < tolerance, name
        else:
            assert (expected[name].float() - got[name].float()).abs().max() < tolerance, name


@pytest.mark.parametrize("kernel", ["onednn", "default"])
@pytest.mark.parametrize("cls", [deit.DeiTForImageClassificationWithTeacher, deit.DeiTForImageClassification, deit.DeiTModel,
                                 deit.ViTForImageClassification, deit.ViTModel])
def test_float32_outputs_and_hidden_states_match_plain_model(cls, kernel, pixels):
    plain = build(cls)
    fast = optimize(plain, linear_kernel=kernel, backend="torch")
    assert isinstance(fast, InferenceModel) and not list(fast.parameters()) and fast.kernel == kernel
    with torch.inference_mode():
        outputs_match(plain(pixels), fast(pixels), 1e-5)
        outputs_match(plain(pixels, output_hidden_states=True), fast(pixels, output_hidden_states=True), 1e-5)
        assert plain(pixels, return_dict=False)[0].shape == fast(pixels, return_dict=False)[0].shape


def test_the_users_model_is_not_modified(pixels):
    plain = build()
    before = {name: tensor.clone() for name, tensor in plain.state_dict().items()}
    classes = [type(module) for module in plain.modules()]
    optimize(plain, dtype="bf16")
    assert [type(module) for module in plain.modules()] == classes
    assert all(torch.equal(before[name], tensor) for name, tensor in plain.state_dict().items())
    assert plain.dtype == torch.float32 and all(p.requires_grad for p in plain.parameters())


def test_other_input_sizes_with_interpolated_positions():
    plain = build()
    fast = optimize(plain, backend="torch")
    pixels = torch.randn(2, 3, 44, 36)  # not whole patches: the trailing pixels are ignored
    with torch.inference_mode():
        outputs_match(plain(pixels, interpolate_pos_encoding=True), fast(pixels, interpolate_pos_encoding=True), 1e-5)
    with pytest.raises(ValueError, match="doesn't match the model"):
        fast(pixels)


def test_positional_arguments_bind_as_in_the_models_forward(pixels):
    plain = build(deit.DeiTForImageClassification)
    fast = optimize(plain, backend="torch")
    with torch.inference_mode():
        # (pixel_values, head_mask, labels, output_attentions, output_hidden_states, return_dict, ...)
        expected = plain(pixels, None, None, False, True, False)
        got = fast(pixels, None, None, False, True, False)
    assert isinstance(got, tuple) and len(got) == len(expected) == 2
    assert (expected[0] - got[0]).abs().max() < 1e-5


def test_last_layer_tokens_gives_the_leading_tokens_of_the_full_run(pixels):
    model = build(deit.DeiTModel)
    with torch.inference_mode():
        full = model(pixels).last_hidden_state
        fast = optimize(model, backend="torch")(pixels, last_layer_tokens=2).last_hidden_state
    assert fast.shape == (5, 2, 64)
    assert (fast - full[:, :2]).abs().max() < 1e-5


@pytest.mark.parametrize("argument", [dict(head_mask=torch.ones(4)), dict(output_attentions=True), dict(labels=torch.zeros(5, dtype=torch.long))])
def test_arguments_it_does_not_serve_say_to_use_the_original_model(argument, pixels):
    fast = optimize(build(), backend="torch")
    name = next(iter(argument))
    with pytest.raises(ValueError, match=f"does not take {name}=...; call the original DeiTForImageClassificationWithTeacher"):
        fast(pixels, **argument)


def test_inference_only_training_and_gradients_refused(pixels):
    fast = optimize(build(), backend="torch")
    assert not fast.training
    fast.eval()  # fine
    with pytest.raises(RuntimeError, match="inference only; train the original model"):
        fast.train()
    with pytest.raises(RuntimeError, match="computes no gradients"):
        fast(pixels.requires_grad_())
    with pytest.raises(TypeError, match="not DeiTForMaskedImageModeling"):
        optimize(build(deit.DeiTForMaskedImageModeling))
    with pytest.raises(ValueError, match="bf16_matmul must be one of auto, bf16, fp32, got 'int8'"):
        optimize(build(), bf16_matmul="int8")


def test_an_activation_onednn_cannot_fuse_runs_after_the_matmul(pixels):
    plain = build(hidden_act="quick_gelu")
    with torch.inference_mode():
        outputs_match(plain(pixels), optimize(plain, backend="torch")(pixels), 1e-5)


@pytest.mark.parametrize("mode", ["bf16", "fp32", "auto"])
def test_bfloat16_is_close_to_float32_in_every_matmul_mode(mode, pixels):
    plain = build()
    fast = optimize(plain, dtype="bf16", bf16_matmul=mode)
    with torch.inference_mode():
        expected = plain(pixels).logits
        got = fast(pixels).logits  # float32 pixels are cast, as the model casts them
        interpolated = fast(torch.randn(2, 3, 40, 40), interpolate_pos_encoding=True).logits
    assert got.dtype == torch.bfloat16 and interpolated.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.05


@pytest.mark.parametrize("kernel", ["onednn", "default"])
def test_bf16_in_float32_arithmetic_rounds_only_what_enters_the_residual_stream(kernel):
    """With float32 arithmetic a bf16 block keeps the attention context and the MLP hidden
    activation in float32 and rounds only the two branch outputs to bf16: it equals that
    computation written out in plain PyTorch (within 2 bf16 steps: the matmuls' summation order
    differs, then the value is rounded). Head size 16, so the folded scale 1/4 is exact in bf16."""
    from deit.inference_model import _InferenceBlock

    layer = build().deit.encoder.layer[0].bfloat16()
    x = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    block = _InferenceBlock(layer, "gelu", torch.bfloat16, torch.float32, kernel)

    def linear(t, module):  # float32 products and sums of the bf16 operands, no rounding
        return t.float() @ module.weight.float().T + module.bias.float()

    attention = layer.attention.attention
    with torch.inference_mode():
        got = block(x)
        normed = layer.layernorm_before(x)
        q, k, v = (linear(normed, p).view(3, 17, 4, 16).transpose(1, 2) for p in (attention.query, attention.key, attention.value))
        context = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
        hidden = x + linear(context.transpose(1, 2).reshape(3, 17, 64), layer.attention.output.dense).bfloat16()
        mlp = torch.nn.functional.gelu(linear(layer.layernorm_after(hidden), layer.intermediate.dense))
        expected = hidden + linear(mlp, layer.output.dense).bfloat16()
    assert got.dtype == torch.bfloat16
    assert ((got.float() - expected.float()).abs() <= expected.float().abs() * 2.0**-6 + 1e-6).all()


def test_without_bf16_kernels_every_mode_computes_bf16_in_float32(pixels, monkeypatch):
    """On a CPU where oneDNN has no bf16 matmul (AVX2; simulated here) every mode, "bf16"
    included, runs the bf16 matmuls in float32 arithmetic: the same outputs as "fp32"."""
    monkeypatch.setattr(sys.modules["deit.inference_model"], "bf16_kernels_available", lambda: False)
    plain = build()
    with torch.inference_mode():
        outputs = {mode: optimize(plain, dtype="bf16", bf16_matmul=mode)(pixels).logits for mode in ("bf16", "auto", "fp32")}
    assert optimize(plain, dtype="bf16", bf16_matmul="bf16").arithmetic is torch.float32
    assert torch.equal(outputs["bf16"], outputs["fp32"]) and torch.equal(outputs["auto"], outputs["fp32"])


def test_bf16_matmul_choice_can_be_forced_and_is_validated(monkeypatch):
    for forced, fast in (("bf16", True), ("fp32", False)):
        monkeypatch.setenv("DEIT_BF16_MATMUL", forced)
        probes.bf16_matmul_is_fast.cache_clear()
        assert probes.bf16_matmul_is_fast() is (fast and probes.bf16_kernels_available())
    monkeypatch.setenv("DEIT_BF16_MATMUL", "fast")
    probes.bf16_matmul_is_fast.cache_clear()
    with pytest.raises(ValueError, match="DEIT_BF16_MATMUL must be one of auto, bf16, fp32, got 'fast'"):
        probes.bf16_matmul_is_fast()
    monkeypatch.setenv("DEIT_ONEDNN_FP32", "yes")
    probes.onednn_fp32_speedup.cache_clear()
    with pytest.raises(ValueError, match="DEIT_ONEDNN_FP32 must be 0 or 1, got 'yes'"):
        probes.onednn_fp32_speedup()
    monkeypatch.delenv("DEIT_BF16_MATMUL")
    monkeypatch.delenv("DEIT_ONEDNN_FP32")
    probes.bf16_matmul_is_fast.cache_clear()
    probes.onednn_fp32_speedup.cache_clear()
    assert isinstance(probes.bf16_matmul_is_fast(), bool) and isinstance(probes.onednn_fp32_wins(), bool)


def test_torch_export_sees_the_registered_ops_and_matches(pixels, tmp_path):
    fast = optimize(build(), backend="torch", linear_kernel="onednn")
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(fast, (pixels,), kwargs={"return_dict": False},
                                  dynamic_shapes={"pixel_values": {0: batch}, "kwargs": {"return_dict": None}})
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "deit.linear.default" in targets and "deit.attention.default" in targets
    with torch.inference_mode():
        expected = fast(pixels[:3]).logits
        got = program.module()(pixels[:3], return_dict=False)[0]
    assert (got - expected).abs().max() < 1e-5


def test_torch_compile_of_the_inference_model_matches(pixels):
    fast = optimize(build(), backend="torch")
    compiled = torch.compile(optimize(build(), backend="torch"))
    with torch.inference_mode():
        assert (compiled(pixels).logits - fast(pixels).logits).abs().max() < 1e-5


def test_registered_ops_have_fake_implementations_that_agree():
    from torch.library import opcheck

    x = torch.randn(2, 5, 16)
    weight = torch.randn(24, 16)  # (the schema test cannot read a packed weight's opaque storage)
    assert torch.equal(torch.ops.deit.linear.default(x, weight, None, "none", None),
                       torch.ops.deit.linear.default(x, kernels.pack_weight(weight, 10), None, "none", None))
    opcheck(torch.ops.deit.linear.default, (x, weight, torch.randn(24), "gelu", None), test_utils=("test_schema", "test_faketensor"))
    qkv = torch.randn(3, 7, 24)
    for dtype in (torch.float32, torch.bfloat16):
        opcheck(torch.ops.deit.attention.default, (qkv.to(dtype), 2, 2), test_utils=("test_schema", "test_faketensor"))


def test_importing_deit_has_no_process_wide_side_effects():
    """No optimizer hooks, no fork handlers, nothing measured at import."""
    code = ("import os, torch.optim.optimizer as o; before = len(o._global_optimizer_post_hooks); import deit, deit.optimize; "
            "import deit.probes as p; assert len(o._global_optimizer_post_hooks) == before; "
            "assert p.bf16_matmul_is_fast.cache_info().currsize == 0 and p.onednn_fp32_speedup.cache_info().currsize == 0")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_other_devices_or_dtypes_get_the_model_itself():
    model = build()
    assert optimize(model, dtype="fp16") is model and model.dtype == torch.float16
