"""deit.train.fast_kernels: OneDNNLinear against nn.Linear, use_fast_kernels, when they pay, and fit() with them on and off.

Tolerances: float32 outputs and gradients within 1e-5 of the largest reference value (oneDNN
and MKL sum in other orders: measured some 1e-6). Under bf16 autocast within 2**-7 of the
largest value, two bf16 units in the last place: both compute the products of the same bf16
operands exactly and sum in float32, and round the sum to bf16 once (measured 0 with oneDNN's
bf16 kernel, about 1e-3 in float32 arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fit_helpers import FAST_KERNELS, datasets, max_abs_difference, needs_fast_kernels, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)
from torch import nn

import deit.train.fast_kernels as fast_kernels
from deit import DeiTConfig, DeiTForImageClassificationWithTeacher
from deit.train.engine import Trainer, fit
from deit.train.fast_kernels import OneDNNLinear, fast_kernels_pay, use_fast_kernels
from deit.train.recipe import TrainConfig

FLOAT32_TOLERANCE = 1e-5
BF16_TOLERANCE = 2**-7


def tiny_model() -> DeiTForImageClassificationWithTeacher:
    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
                        patch_size=4, num_labels=3)
    return DeiTForImageClassificationWithTeacher(config)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference, relative to the largest magnitude of the reference ``b``."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


def outputs_and_gradients(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = module(x)
    inputs = [x, *module.parameters()]
    return [y.detach(), *torch.autograd.grad(y, inputs, grad.to(y.dtype))]


# (in, out): the weight gradient's two kernel layouts (the smaller dimension as the output's
# rows), DeiT-S's MLP shape; 2-D and 3-D inputs; with and without bias.
SHAPES = [((7, 24), 40, True), ((3, 5, 40), 24, True), ((2, 9, 384), 1536, True), ((3, 5, 24), 40, False)]


@needs_fast_kernels
@pytest.mark.parametrize(("x_shape", "out_features", "bias"), SHAPES)
def test_float32_forward_and_gradients_match_nn_linear(x_shape, out_features, bias):
    torch.manual_seed(0)
    plain = nn.Linear(x_shape[-1], out_features, bias=bias)
    fast = OneDNNLinear.sharing(plain)
    x, grad = torch.randn(x_shape), torch.randn(*x_shape[:-1], out_features)
    expected = outputs_and_gradients(plain, x, grad, autocast=False)
    got = outputs_and_gradients(fast, x, grad, autocast=False)
    assert len(got) == (4 if bias else 3)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, expected):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
        assert relative_difference(a, b) <= FLOAT32_TOLERANCE, name


def bf16_arithmetics() -> list:
    """The two ways bf16 matmuls run: oneDNN's bf16 kernel (where the CPU has one) and float32
    arithmetic on the bf16 operands."""
    has_bf16 = fast_kernels.bf16_kernels_available()
    return [pytest.param(True, id="bf16-kernel", marks=pytest.mark.skipif(not has_bf16, reason="no oneDNN bf16 matmul on this CPU")),
            pytest.param(False, id="fp32-arithmetic")]


@needs_fast_kernels
@pytest.mark.parametrize("bf16_is_fast", bf16_arithmetics())
@pytest.mark.parametrize(("x_shape", "out_features", "bias"), SHAPES)
def test_bf16_autocast_forward_and_gradients_match_nn_linear(monkeypatch, bf16_is_fast, x_shape, out_features, bias):
    monkeypatch.setattr(fast_kernels, "bf16_matmul_is_fast", lambda: bf16_is_fast)
    assert fast_kernels.arithmetic_dtype(torch.bfloat16) == (torch.bfloat16 if bf16_is_fast else torch.float32)
    torch.manual_seed(0)
    plain = nn.Linear(x_shape[-1], out_features, bias=bias)
    fast = OneDNNLinear.sharing(plain)
    x, grad = torch.randn(x_shape), torch.randn(*x_shape[:-1], out_features)
    expected = outputs_and_gradients(plain, x, grad, autocast=True)
    got = outputs_and_gradients(fast, x, grad, autocast=True)
    # bf16 output and input gradient (as autocast's F.linear), float32 parameter gradients.
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert relative_difference(a, b) <= BF16_TOLERANCE, name
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32


def test_other_dtypes_and_devices_run_plain_f_linear(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the oneDNN kernel ran")

    monkeypatch.setattr(fast_kernels, "_matmul", refuse)
    fast = OneDNNLinear.sharing(nn.Linear(4, 3).double())
    fast(torch.randn(2, 4, dtype=torch.float64)).sum().backward()  # float64: F.linear
    with torch.autocast("cpu", torch.float16):
        assert fast.float()(torch.randn(2, 4)).dtype == torch.float16


@needs_fast_kernels
def test_use_fast_kernels_keeps_parameters_names_and_outputs():
    torch.manual_seed(0)
    model = tiny_model()
    reference = tiny_model()
    reference.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    parameters = list(model.named_parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # built before: must still train the model
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    handle = linears[0].register_forward_hook(lambda module, args, output: calls.append(type(module)))
    calls: list[type] = []

    assert use_fast_kernels(model) == len(linears) == 2 * 6 + 2  # q, k, v, 3 dense per block; two heads
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert list(model.state_dict()) == keys
    assert all(name == name2 and p is p2 for (name, p), (name2, p2) in zip(parameters, model.named_parameters(), strict=True))
    assert use_fast_kernels(model) == 0  # nothing left to replace

    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    model.eval(), reference.eval()
    with torch.no_grad():
        assert relative_difference(model(x).logits, reference(x).logits) <= FLOAT32_TOLERANCE
    assert calls == [OneDNNLinear]  # the hook moved with the module, and its handle still removes it
    handle.remove()
    model.train()
    model(x, labels=labels).loss.backward()
    optimizer.step()
    assert relative_difference(model.deit.encoder.layer[0].attention.attention.query.weight,
                               reference.deit.encoder.layer[0].attention.attention.query.weight) > 0  # the optimizer moved it
    assert calls == [OneDNNLinear]


def test_use_fast_kernels_leaves_subclasses_and_shares_shared_linears():
    class Adapter(nn.Linear):
        pass

    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, Adapter(4, 2))
    assert use_fast_kernels(model) == 1
    assert model[0] is model[2] and type(model[0]) is OneDNNLinear and type(model[3]) is Adapter
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        use_fast_kernels(model, dtype=torch.float16)


@needs_fast_kernels
def test_compiled_model_traces_plain_linears_and_matches():
    """torch.compile (fullgraph not asked for) traces ordinary ops, not the oneDNN function; the
    compiled loss and gradients match the eager fast model's."""
    torch.manual_seed(0)
    model = tiny_model()
    use_fast_kernels(model)
    graphs = []

    def recording_backend(graph_module: torch.fx.GraphModule, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    compiled = torch.compile(model, backend=recording_backend)
    loss = compiled(x, labels=labels).loss
    compiled_grads = torch.autograd.grad(loss, list(model.parameters()))
    eager_loss = model(x, labels=labels).loss
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    assert graphs
    code = "\n".join(g.code for g in graphs)
    assert "linear" in code and "_linear_pointwise" not in code and "OneDNNLinearFunction" not in code
    assert float(loss.detach()) == pytest.approx(float(eager_loss.detach()), rel=FLOAT32_TOLERANCE)
    # (Some gradients are rounding noise about 0, e.g. of biases ahead of a LayerNorm: measured
    # against the largest gradient.)
    largest = max(float(g.abs().max()) for g in eager_grads)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=FLOAT32_TOLERANCE * largest)


# ------------------------------------------------------------------------- when they pay
def test_fast_kernels_pay(monkeypatch):
    assert fast_kernels_pay("off", torch.float32, "cpu") is False
    assert fast_kernels_pay("auto", torch.float16, "cpu") is False
    assert fast_kernels_pay("auto", torch.float32, torch.device("cuda", 0)) is False
    monkeypatch.setattr(fast_kernels, "fast_kernels_available", lambda: True)
    monkeypatch.setattr(fast_kernels, "bf16_matmul_is_fast", lambda: False)
    for fast in (True, False):
        # auto: where the measured training step of a Linear is faster on the kernels.
        monkeypatch.setattr(fast_kernels, "training_kernels_win", lambda dtype: fast)
        assert fast_kernels_pay("auto", torch.float32, "cpu") is fast
        assert fast_kernels_pay("auto", torch.bfloat16, "cpu") is fast
        assert fast_kernels_pay("on", torch.float32, "cpu") is True
        assert fast_kernels_pay("on", torch.bfloat16, "cpu") is True
    # Where oneDNN's bf16 kernel is fast, autocast runs it already: never for bf16 autocast.
    monkeypatch.setattr(fast_kernels, "training_kernels_win", lambda dtype: True)
    monkeypatch.setattr(fast_kernels, "bf16_matmul_is_fast", lambda: True)
    assert fast_kernels_pay("auto", torch.bfloat16, "cpu") is False
    with pytest.raises(ValueError, match="CPU kernels, this run trains on cuda"):
        fast_kernels_pay("on", torch.float32, "cuda")
    with pytest.raises(ValueError, match="not torch.float16"):
        fast_kernels_pay("on", torch.float16, "cpu")
    with pytest.raises(ValueError, match="fast_kernels must be one of auto, on, off, got 'fast'"):
        fast_kernels_pay("fast", torch.float32, "cpu")
    monkeypatch.setattr(fast_kernels, "fast_kernels_available", lambda: False)
    assert fast_kernels_pay("auto", torch.bfloat16, "cpu") is False
    with pytest.raises(ValueError, match="no oneDNN matmul kernel"):
        fast_kernels_pay("on", torch.float32, "cpu")


def test_training_probe_measures_once_without_moving_the_global_random_state():
    fast_kernels.training_kernels_win.cache_clear()
    state = torch.get_rng_state()
    assert isinstance(fast_kernels.training_kernels_win(torch.float32), bool)
    assert torch.equal(torch.get_rng_state(), state)
    assert fast_kernels.training_kernels_win.cache_info().currsize == 1


def test_invalid_setting_is_a_clear_error(capsys):
    from deit.cli import main

    with pytest.raises(ValueError, match="fast_kernels must be one of"):
        TrainConfig(fast_kernels="yes").validate()
    with pytest.raises(SystemExit):
        main(["train", "--fast-kernels", "yes"])
    assert "--fast-kernels: invalid choice: 'yes'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- fit
@needs_fast_kernels
def test_trainer_replaces_before_optimizer_and_ema(tmp_path, capsys):
    from deit.train.distributed import DistributedContext

    train_set, val_set = datasets()
    trainer = Trainer(tiny_config(str(tmp_path / "run"), fast_kernels="on", model_ema=True), DistributedContext(0, 1, 0, torch.device("cpu")),
                      train_set=train_set, val_set=val_set)
    assert trainer.fast_kernels and "fast kernels: on (14 Linear layers on oneDNN" in capsys.readouterr().out
    assert not any(type(m) is nn.Linear for m in trainer.model.modules())
    assert not any(type(m) is nn.Linear for m in trainer.ema.module.modules())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.model.parameters()}
    off = Trainer(tiny_config(str(tmp_path / "off"), fast_kernels="off"), DistributedContext(0, 1, 0, torch.device("cpu")),
                  train_set=train_set, val_set=val_set)
    assert not off.fast_kernels and "fast kernels: off (--fast-kernels off" in capsys.readouterr().out
    assert not any(isinstance(m, OneDNNLinear) for m in off.model.modules())


@needs_fast_kernels
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_fit_with_fast_kernels_on_and_off_ends_alike(tmp_path, amp):
    train_set, val_set = datasets()
    runs = {setting: fit(tiny_config(str(tmp_path / setting), fast_kernels=setting, amp=amp, model_ema=True, model_ema_decay=0.9),
                         train_dataset=train_set, val_dataset=val_set) for setting in ("on", "off")}
    on, off = runs["on"], runs["off"]
    # The same data and steps, the matmuls summed in another order (float32) or rounded to bf16
    # from other float32 sums: a float32 difference of 1e-6 grows over 16 steps at lr 0.05.
    tolerance = 1e-4 if amp == "none" else 0.02
    np.testing.assert_allclose(on.step_losses, off.step_losses, rtol=tolerance, atol=tolerance)
    assert max_abs_difference(on.model.state_dict(), off.model.state_dict()) < (1e-3 if amp == "none" else 0.05)
    for key in ("val_acc1", "val_acc1_cls", "val_acc1_dist", "ema_acc1"):
        assert on.final_metrics[key] == pytest.approx(off.final_metrics[key], abs=100 / len(val_set) + 1e-9), key  # one image at most
    assert on.final_metrics["val_loss"] == pytest.approx(off.final_metrics["val_loss"], rel=tolerance, abs=tolerance)
