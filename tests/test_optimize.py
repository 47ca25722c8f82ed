"""deit.optimize: the fast CPU kernels give the plain model's outputs and gradients.

Tolerances: float32 1e-5 absolute on outputs of order 1 (only the summation order changes);
bfloat16 0.05 absolute against float32 (8-bit mantissa); float32 gradients 1e-4 relative to
the largest gradient of each parameter; bf16-autocast gradients within twice the error of
PyTorch's own autocast run of the plain model.
"""

from __future__ import annotations

import copy
import pickle
import sys

import pytest
import torch

import deit
from deit.optimize import PARTS, bf16_kernels_available, bf16_matmul_is_fast, fast_kernels_available, install_fast_kernels, optimize

from small_models import SMALL, build

pytestmark = pytest.mark.skipif(not fast_kernels_available(), reason="PyTorch build without the oneDNN kernels")


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["onednn-everywhere", "pytorch-fp32"])
def kernel_choice(request, monkeypatch):
    """Both set-ups, whichever this CPU would pick: all oneDNN kernels (AMD-like CPUs), or
    PyTorch's own float32 kernels with oneDNN for the GELU matmul and bf16 (Intel-like)."""
    from deit.optimize import onednn_fp32_is_fast
    monkeypatch.setenv("DEIT_ONEDNN_FP32", "1" if request.param == "onednn-everywhere" else "0")
    onednn_fp32_is_fast.cache_clear()
    yield request.param
    onednn_fp32_is_fast.cache_clear()


@pytest.mark.parametrize("cls", [deit.DeiTForImageClassificationWithTeacher, deit.DeiTForImageClassification, deit.DeiTModel])
def test_float32_outputs_match_plain_model(cls, pixels, kernel_choice):
    plain = build(cls)
    fast = optimize(copy.deepcopy(plain))
    with torch.inference_mode():
        expected, got = plain(pixels), fast(pixels)
    for name in ("logits", "last_hidden_state", "pooler_output"):
        if name in expected:
            assert (expected[name] - got[name]).abs().max() < 1e-5, name


def test_attentions_head_mask_and_hidden_states_still_match(pixels):
    plain, fast = build(attn_implementation="eager"), None
    fast = optimize(copy.deepcopy(plain))
    head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5])
    with torch.inference_mode():
        expected = plain(pixels, head_mask=head_mask, output_attentions=True, output_hidden_states=True)
        got = fast(pixels, head_mask=head_mask, output_attentions=True, output_hidden_states=True)
    for a, b in zip(expected.attentions + expected.hidden_states, got.attentions + got.hidden_states):
        assert (a - b).abs().max() < 1e-5


def test_bfloat16_is_close_to_float32_and_autocast_works(pixels):
    plain = build()
    fast = optimize(copy.deepcopy(plain), dtype="bf16")
    with torch.inference_mode():
        expected = plain(pixels).logits
        got = fast(pixels.bfloat16()).logits
        fast32 = optimize(copy.deepcopy(plain))
        with torch.autocast("cpu", torch.bfloat16):
            autocast = fast32(pixels).logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.05
    assert (autocast.float() - expected).abs().max() < 0.05


@pytest.mark.parametrize("mode", ["bf16", "fp32", "auto"])
def test_bf16_matmul_modes_compute_the_bf16_linear(mode, pixels):
    """Every mode gives a bf16 Linear's result: products of the bf16 operands summed in float32
    and rounded to bf16 once (so within one bf16 step of that, only the summation order differs),
    and a whole model within the bf16 tolerance of float32."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 80).bfloat16()
    x = torch.randn(7, 96).bfloat16()
    expected = (x.float() @ linear.weight.float().T + linear.bias.float()).bfloat16().float()
    fast = copy.deepcopy(linear)
    install_fast_kernels(fast, bf16_matmul=mode)
    with torch.inference_mode():
        got = fast(x)
    assert got.dtype == torch.bfloat16
    one_step = expected.abs() * 2.0**-7  # one bf16 unit in the last place, at most
    assert ((got.float() - expected).abs() <= one_step).all()

    plain = build()
    model = optimize(copy.deepcopy(plain), dtype="bf16", bf16_matmul=mode)
    with torch.inference_mode():
        logits = model(pixels.bfloat16()).logits
        reference = plain(pixels).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.05


def test_bf16_in_float32_arithmetic_rounds_only_what_enters_the_residual_stream():
    """With float32 arithmetic, a bf16 block hands the attention context and the MLP hidden
    activation to the next Linear in float32 and rounds only the two branch outputs to bf16:
    the block equals that computation written out in plain PyTorch (within 2 bf16 steps of the
    result: the matmuls' summation order differs, then the value is rounded). Head size 16,
    so the folded softmax scale 1/4 is exact in bf16."""
    layer = build().deit.encoder.layer[0].bfloat16()
    x = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    seen = []
    fast = copy.deepcopy(layer)
    install_fast_kernels(fast, bf16_matmul="fp32")
    for linear in (fast.attention.output.dense, fast.output.dense):
        linear.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))

    def linear(t, module):  # float32 products and sums of the bf16 operands, no rounding
        return t.float() @ module.weight.float().T + module.bias.float()

    attention = layer.attention.attention
    with torch.inference_mode():
        got = fast(x)[0]
        normed = layer.layernorm_before(x)
        q, k, v = (linear(normed, p).view(3, 17, 4, 16).transpose(1, 2) for p in (attention.query, attention.key, attention.value))
        context = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
        hidden = x + linear(context.transpose(1, 2).reshape(3, 17, 64), layer.attention.output.dense).bfloat16()
        mlp = torch.nn.functional.gelu(linear(layer.layernorm_after(hidden), layer.intermediate.dense))
        expected = hidden + linear(mlp, layer.output.dense).bfloat16()
    assert seen == [torch.float32, torch.float32]
    assert got.dtype == torch.bfloat16
    assert ((got.float() - expected.float()).abs() <= expected.float().abs() * 2.0**-7 + 1e-6).all()


def test_without_bf16_kernels_every_mode_computes_bf16_in_float32(pixels, monkeypatch):
    """On a CPU where oneDNN has no bf16 matmul (AVX2; simulated here), every bf16_matmul mode,
    "bf16" included, runs the bf16 matmuls in float32 arithmetic instead of failing in oneDNN
    or falling back to PyTorch's emulated bf16 matmul: the same outputs as the "fp32" mode."""
    optimize_module = sys.modules["deit.optimize"]
    monkeypatch.setattr(optimize_module, "bf16_kernels_available", lambda: False)
    bf16_matmul_is_fast.cache_clear()
    try:
        assert bf16_matmul_is_fast() is False
        plain = build().to(torch.bfloat16)
        with torch.inference_mode():
            outputs = {mode: optimize(copy.deepcopy(plain), bf16_matmul=mode)(pixels.bfloat16()).logits for mode in ("bf16", "auto", "fp32")}
            reference = plain(pixels.bfloat16()).logits
        kernel = optimize_module._PackedLinear("bf16")
        assert kernel.arithmetic_dtype(torch.bfloat16) is torch.float32
        assert torch.equal(outputs["bf16"], outputs["fp32"]) and torch.equal(outputs["auto"], outputs["fp32"])
        assert (outputs["fp32"].float() - reference.float()).abs().max() < 0.05
    finally:
        bf16_matmul_is_fast.cache_clear()


def test_bf16_matmul_choice_is_validated_and_can_be_forced(monkeypatch):
    with pytest.raises(ValueError, match="bf16_matmul must be one of auto, bf16, fp32, got 'int8'"):
        optimize(build(), bf16_matmul="int8")
    for forced, fast in (("bf16", True), ("fp32", False)):
        monkeypatch.setenv("DEIT_BF16_MATMUL", forced)
        bf16_matmul_is_fast.cache_clear()
        assert bf16_matmul_is_fast() is (fast and bf16_kernels_available())  # nothing to force without bf16 kernels
    monkeypatch.setenv("DEIT_BF16_MATMUL", "fast")
    bf16_matmul_is_fast.cache_clear()
    with pytest.raises(ValueError, match="DEIT_BF16_MATMUL must be one of auto, bf16, fp32, got 'fast'"):
        bf16_matmul_is_fast()
    monkeypatch.delenv("DEIT_BF16_MATMUL")
    bf16_matmul_is_fast.cache_clear()
    assert isinstance(bf16_matmul_is_fast(), bool)


def gradients(model: torch.nn.Module, pixels: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    model.train().zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        model(pixels, labels=torch.tensor([0, 1, 2, 3, 4])).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def relative_errors(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    # Relative to each parameter's largest gradient, floored: some (e.g. the key bias, which
    # softmax ignores) are zero up to rounding.
    return torch.stack([(g - r).abs().max() / r.abs().max().clamp_min(1e-4) for g, r in zip(grads, reference)])


@pytest.mark.parametrize("bf16_matmul", ["bf16", "fp32"])
def test_training_gradients_match_plain_model(pixels, kernel_choice, bf16_matmul):
    plain = build()
    fast = optimize(copy.deepcopy(plain), bf16_matmul=bf16_matmul)
    reference = gradients(plain, pixels, autocast=False)
    assert relative_errors(gradients(fast, pixels, autocast=False), reference).max() < 1e-4
    # bf16 autocast: ours is as close to the float32 gradients as PyTorch's own autocast.
    plain_bf16 = relative_errors(gradients(plain, pixels, autocast=True), reference)
    fast_bf16 = relative_errors(gradients(fast, pixels, autocast=True), reference)
    assert fast_bf16.mean() < 2 * plain_bf16.mean() + 1e-3


def test_state_dict_unchanged_and_new_weights_are_picked_up(pixels):
    plain = build()
    fast = optimize(copy.deepcopy(plain))
    assert list(fast.state_dict()) == list(plain.state_dict())
    with torch.inference_mode():
        fast(pixels)  # fills the packed-weight caches
    other = build()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    fast.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert (fast(pixels).logits - other(pixels).logits).abs().max() < 1e-5


def test_copies_and_pickles(pixels):
    fast = optimize(build())
    with torch.inference_mode():
        expected = fast(pixels).logits
        for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
            # Not bit-equal: MKL (PyTorch's float32 GEMM where oneDNN does not pay) picks its
            # kernel by the memory alignment of the copied weights; one float32 rounding step.
            assert (clone(pixels).logits - expected).abs().max() < 1e-6


def test_optimized_model_still_exports(pixels):
    from deit.export import export_program

    fast = optimize(build())
    program = export_program(fast)
    with torch.inference_mode():
        (exported,) = program.module()(pixels)
        assert (exported - fast(pixels).logits).abs().max() < 1e-5


def test_last_layer_tokens_gives_the_leading_tokens_of_the_full_run(pixels):
    model = build(deit.DeiTModel)
    with torch.inference_mode():
        full = model(pixels).last_hidden_state
        partial = model(pixels, last_layer_tokens=2).last_hidden_state
        fast = optimize(copy.deepcopy(model))(pixels, last_layer_tokens=2).last_hidden_state
    assert partial.shape == (5, 2, 64)
    assert (partial - full[:, :2]).abs().max() < 1e-5
    assert (fast - full[:, :2]).abs().max() < 1e-5


def test_other_input_sizes_with_interpolated_positions():
    plain = build()
    fast = optimize(copy.deepcopy(plain))
    pixels = torch.randn(2, 3, 44, 36)  # not whole patches: the trailing pixels are ignored
    with torch.inference_mode():
        expected = plain(pixels, interpolate_pos_encoding=True).logits
        got = fast(pixels, interpolate_pos_encoding=True).logits
    assert (expected - got).abs().max() < 1e-5


@pytest.mark.parametrize("grad", [False, True])
def test_float32_attention_stays_float32_under_autocast(grad, kernel_choice):
    """Where bf16 matmuls run in float32 arithmetic, attention gets float32 q/k/v; autocast must
    not round them to bf16 inside attention (it would, for a plain SDPA or bmm call), in
    inference (SDPA) and in training (SDPA, or the chunked computation where oneDNN is fast)."""
    from deit.optimize import _attention

    qkv = torch.randn(2, 9, 3 * 16, generator=torch.Generator().manual_seed(3))
    with torch.set_grad_enabled(grad):
        expected = _attention(qkv, 2, 8)
        with torch.autocast("cpu", torch.bfloat16):
            got = _attention(qkv, 2, 8)
            assert torch.nn.functional.scaled_dot_product_attention(qkv[None], qkv[None], qkv[None]).dtype == torch.bfloat16
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_deepcopy_binds_the_query_scaling_to_the_copy():
    """The fused q/k/v kernel folds the softmax scale through a method of its module: a copy
    (EMA, benchmarks) must use its own module, not keep the original alive."""
    clone = copy.deepcopy(optimize(build()))
    attention = clone.deit.encoder.layer[0].attention.attention
    assert attention._kernel.prepare.__self__ is attention


@pytest.mark.parametrize("parts", [("mlp", "attention"), ("mlp", "attention", "patches")])
def test_bf16_without_our_output_linears_hands_over_nothing(parts, pixels):
    """The float32 hand-over only goes to our own Linears: with the plain output Linears left in
    place, a bf16 model computed in float32 arithmetic still runs and stays bf16."""
    plain = build()
    model = copy.deepcopy(plain).bfloat16()
    install_fast_kernels(model, parts, bf16_matmul="fp32")
    with torch.inference_mode():
        logits = model(pixels.bfloat16()).logits
        reference = plain(pixels).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.05


def test_one_model_in_float32_then_autocast_then_float32(pixels):
    """The packed weights are re-derived when the compute dtype changes, both ways."""
    plain = build()
    fast = optimize(copy.deepcopy(plain))
    with torch.inference_mode():
        expected = plain(pixels).logits
        first = fast(pixels).logits
        with torch.autocast("cpu", torch.bfloat16):
            autocast = fast(pixels).logits
        again = fast(pixels).logits
    assert (first - expected).abs().max() < 1e-5 and torch.equal(first, again)
    assert (autocast.float() - expected).abs().max() < 0.05 and not torch.equal(autocast.float(), first)


def test_optimizing_again_applies_new_settings_and_rederives_weights(pixels):
    """Calling optimize on an optimized model switches the bf16 matmul choice and derives the
    packed weights afresh (the way to refresh parameters made under inference_mode)."""
    with torch.inference_mode():
        model = optimize(build(), bf16_matmul="bf16")
        donor = build()
        with torch.no_grad():
            for p in donor.parameters():
                p.mul_(1.5)
        model(pixels)
        model.load_state_dict(donor.state_dict())  # in place, on inference tensors: no version bump
        optimize(model, bf16_matmul="fp32")
        got = model(pixels).logits
        expected = donor(pixels).logits
    kernels = [m._kernel for m in model.modules() if hasattr(m, "_kernel")]
    assert kernels and all(k.bf16_matmul == "fp32" for k in kernels)
    assert (got - expected).abs().max() < 1e-5


BLOCKLESS = tuple(part for part in PARTS if part != "blocks")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_calling_their_parts_directly_change_nothing(dtype, pixels, monkeypatch):
    """The direct block path (residual sums in the matmul epilogue in float32) gives exactly what
    the same kernels give through the modules, in float32 and in bf16; and it is taken."""
    through_modules = build().to(dtype)
    install_fast_kernels(through_modules, BLOCKLESS)
    direct = optimize(copy.deepcopy(through_modules))
    wrapper_calls = []
    wrapper_forward = deit.modeling.DeiTAttention.forward
    monkeypatch.setattr(deit.modeling.DeiTAttention, "forward", lambda *a, **k: wrapper_calls.append(1) or wrapper_forward(*a, **k))
    with torch.inference_mode():
        expected = through_modules(pixels.to(dtype))
        assert len(wrapper_calls) == SMALL["num_hidden_layers"]
        got = direct(pixels.to(dtype))
    assert len(wrapper_calls) == SMALL["num_hidden_layers"]  # the direct path skipped the wrappers
    assert torch.equal(expected.logits, got.logits)


@pytest.mark.parametrize("where", ["intermediate", "intermediate.dense", "attention", "attention.attention.query",
                                   "attention.output.dense", "output", "layernorm_after", "global"])
def test_forward_hooks_on_a_blocks_parts_still_fire(where, pixels):
    """A hook on a module the fast path would skip (or a global one) sends the computation
    through that module: the hook sees what it sees in the plain model."""
    seen: dict[str, list[torch.Tensor]] = {}
    for name, model in (("plain", build()), ("fast", optimize(build()))):
        outputs = seen[name] = []
        if where == "global":  # every module's output: compare the MLP's hidden activations
            def hook(module, args, output):
                if isinstance(module, deit.modeling.DeiTIntermediate):
                    outputs.append(output)
            handle = torch.nn.modules.module.register_module_forward_hook(hook)
        else:
            handle = model.deit.encoder.layer[1].get_submodule(where).register_forward_hook(
                lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        with torch.inference_mode():
            model(pixels)
        handle.remove()
    assert len(seen["fast"]) == len(seen["plain"]) > 0
    for expected, got in zip(seen["plain"], seen["fast"]):
        assert (expected - got).abs().max() < 1e-5


def test_monte_carlo_dropout_and_replaced_forwards_are_not_skipped(pixels):
    """Dropout switched back on inside an eval model (Monte Carlo dropout), and a ``forward``
    replaced on one module (as accelerate and adapters do), act as in the plain model."""
    plain = build(hidden_dropout_prob=0.5, drop_path_rate=0.5)
    fast = optimize(copy.deepcopy(plain))
    for model in (plain, fast):
        for module in model.modules():
            if isinstance(module, (torch.nn.Dropout, deit.modeling.DropPath)):
                module.train()
    results = []
    for model in (plain, fast):
        torch.manual_seed(1)
        with torch.inference_mode():
            results.append(model(pixels).logits)
    assert (results[0] - results[1]).abs().max() < 1e-5

    plain, fast = build(), optimize(build())
    for model in (plain, fast):
        dense = model.deit.encoder.layer[1].output.dense
        dense.forward = lambda x, original=dense.forward: torch.zeros_like(original(x))  # drops the MLP branch
    with torch.inference_mode():
        assert (plain(pixels).logits - fast(pixels).logits).abs().max() < 1e-5


def test_parametrized_weights_are_read_afresh(pixels):
    """A weight computed on access (a parametrization) is not cached: changing what it computes
    changes the output, also under inference mode (no version counters there)."""
    from torch.nn.utils import parametrize

    class Scaled(torch.nn.Module):
        scale = 1.0

        def forward(self, weight):
            return weight * self.scale

    plain, fast = build(), optimize(build())
    for model in (plain, fast):
        for module in (model.deit.encoder.layer[0].intermediate.dense, model.deit.encoder.layer[0].attention.attention.key,
                       model.deit.encoder.layer[0].output.dense, model.deit.embeddings.patch_embeddings.projection):
            parametrize.register_parametrization(module, "weight", Scaled())
        for module in (model.deit.encoder.layer[1].attention.attention.value, model.deit.encoder.layer[1].output.dense,
                       model.cls_classifier):
            parametrize.register_parametrization(module, "bias", Scaled())  # the bias alone
    with torch.inference_mode():
        for scale in (1.0, 0.5, 2.0):
            Scaled.scale = scale
            assert (plain(pixels).logits - fast(pixels).logits).abs().max() < 1e-5, scale

    # One Linear on its own: each recomputed weight tends to land where the last one was freed,
    # so a cache keyed on the weight's memory would keep the first one.
    linear = torch.nn.Linear(128, 64)
    install_fast_kernels(linear)
    parametrize.register_parametrization(linear, "weight", Scaled())
    x = torch.randn(3, 128)
    with torch.inference_mode():
        for scale in (1.0, 0.5, 2.0, 4.0):
            Scaled.scale = scale
            got = linear(x)
            assert (got - torch.nn.functional.linear(x, linear.weight, linear.bias)).abs().max() < 1e-5, scale


def test_weights_updated_by_a_fused_optimizer_are_picked_up(pixels):
    """Fused optimizers update parameters without moving their version counters: the cached
    (packed) weights are derived again after any optimizer step."""
    plain, fast = build(), optimize(build())
    with torch.inference_mode():
        fast(pixels)  # caches derived from the initial weights
    labels = torch.arange(pixels.shape[0]) % SMALL["num_labels"]
    for model in (plain, fast):
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        model.train()
        model(pixels, labels=labels).loss.backward()
        optimizer.step()
        model.eval()
    with torch.inference_mode():
        assert (plain(pixels).logits - fast(pixels).logits).abs().max() < 1e-4


class _LoRALinear(torch.nn.Linear):
    """An adapter in the style of loralib: a Linear subclass with a forward of its own."""

    def forward(self, x):
        return super().forward(x) * 1.5


def _swap_in_adapters(model):
    layer = model.deit.encoder.layer[0]
    for parent, name in ((layer.attention.attention, "query"), (layer.intermediate, "dense"), (layer.attention.output, "dense")):
        old = getattr(parent, name)
        new = _LoRALinear(old.in_features, old.out_features)
        new.load_state_dict(old.state_dict())
        setattr(parent, name, new)
    layer.intermediate.intermediate_act_fn = torch.nn.Tanh()
    conv = model.deit.embeddings.patch_embeddings.projection
    padded = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=1)
    padded.load_state_dict(conv.state_dict())
    model.deit.embeddings.patch_embeddings.projection = padded
    return model


def test_modules_swapped_in_after_optimizing_run_their_own_code(pixels):
    """Adapter subclasses with their own forward, another activation, a padded patch
    convolution: swapped in after optimize, each computes what it does in the plain model."""
    plain, fast = _swap_in_adapters(build()), _swap_in_adapters(optimize(build()))
    with torch.inference_mode():
        expected = plain(pixels).logits
        assert (expected - fast(pixels).logits).abs().max() < 1e-5


def test_bf16_with_a_plain_linear_swapped_in_after_optimizing(pixels):
    fast = optimize(build(), dtype="bf16", bf16_matmul="fp32")
    reference = build().to(torch.bfloat16)
    for model in (fast, reference):
        layer = model.deit.encoder.layer[0]
        for parent in (layer.attention.output, layer.output):
            plain_linear = torch.nn.Linear(parent.dense.in_features, parent.dense.out_features, dtype=torch.bfloat16)
            plain_linear.load_state_dict(parent.dense.state_dict())
            parent.dense = plain_linear
    with torch.inference_mode():
        got = fast(pixels.bfloat16()).logits.float()  # took float32 from the attention before: a dtype error
        assert (got - reference(pixels.bfloat16()).logits.float()).abs().max() < 0.05


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the patch projection's input needs no gradient
@pytest.mark.parametrize("autocast", [False, True])
def test_backward_hooks_fire_in_training(autocast, pixels, kernel_choice):
    counts = {}
    labels = torch.arange(pixels.shape[0]) % SMALL["num_labels"]
    for name, model in (("plain", build()), ("fast", optimize(build()))):
        model.train()
        calls = counts[name] = []
        for where in ("encoder.layer.0.attention.attention.value", "embeddings.patch_embeddings.projection",
                      "encoder.layer.1.intermediate.dense"):
            model.deit.get_submodule(where).register_full_backward_hook(lambda m, gi, go, calls=calls, where=where: calls.append(where))
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loss = model(pixels, labels=labels).loss
        loss.backward()
    assert sorted(counts["fast"]) == sorted(counts["plain"]) and len(counts["plain"]) == 3


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_over_stacked_parameters(pixels):
    """Model ensembling with torch.func: the transforms see the plain code."""
    from torch.func import functional_call, stack_module_state

    members = [build(), build(hidden_dropout_prob=0.0)]
    with torch.no_grad():
        for p in members[1].parameters():
            p.mul_(0.9)
    params, buffers = stack_module_state(members)
    for base in (copy.deepcopy(members[0]), optimize(copy.deepcopy(members[0]))):
        def run(p, b, x, base=base):
            return functional_call(base, (p, b), (x,)).logits
        with torch.no_grad():
            got = torch.vmap(run, in_dims=(0, 0, None))(params, buffers, pixels)
            for i, member in enumerate(members):
                assert (got[i] - member(pixels).logits).abs().max() < 1e-5
