"""Batch streams (deit.streams, the optimized encoder): splitting an inference batch across
single-threaded workers gives the whole batch's results and changes nothing a user sees.

Tolerance: float32 1e-6 absolute between the split and the whole batch on outputs of order 1
(the kernels work row by row; on the CPUs measured the results are bit-equal).
"""

from __future__ import annotations

import copy
import multiprocessing
import sys
import threading

import pytest
import torch

import deit
from deit import streams
from deit.optimize import fast_kernels_available, optimize

from small_models import build

# (deit.optimize is also the function the package exports: the module, by name)
optimize_module = sys.modules["deit.optimize"]
pytestmark = pytest.mark.skipif(not fast_kernels_available(), reason="PyTorch build without the oneDNN kernels")


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def split_calls(monkeypatch) -> list[tuple[str, int]]:
    """(inference or training, number of streams) of every split the encoders make."""
    calls: list[tuple[str, int]] = []

    def counting_inference(function, batch, count):
        calls.append(("inference", count))
        return streams.run_in_streams(function, batch, count)

    def counting_training(function, batch, count, parameters):
        calls.append(("training", count))
        return streams.train_in_streams(function, batch, count, parameters)

    monkeypatch.setattr(optimize_module, "run_in_streams", counting_inference)
    monkeypatch.setattr(optimize_module, "train_in_streams", counting_training)
    return calls


@pytest.mark.parametrize("cls", [deit.DeiTForImageClassificationWithTeacher, deit.DeiTModel, deit.DeiTForMaskedImageModeling])
@pytest.mark.parametrize("count", [2, 3])
def test_streams_give_the_whole_batchs_outputs(cls, count, batch, split_calls):
    plain = build(cls)
    whole = optimize(copy.deepcopy(plain), streams=1)
    split = optimize(copy.deepcopy(plain), streams=count)
    with torch.inference_mode():
        expected, got, reference = whole(batch), split(batch), plain(batch)
    assert split_calls == [("inference", count)]  # once, by the encoder (and not by the whole-batch model)
    for name in ("logits", "last_hidden_state", "pooler_output", "reconstruction"):
        if name in expected:
            assert (expected[name] - got[name]).abs().max() < 1e-6, name
            assert (reference[name] - got[name]).abs().max() < 1e-5, name


def test_streams_under_no_grad_and_autocast_match(batch, split_calls):
    plain = build()
    whole = optimize(copy.deepcopy(plain), streams=1)
    split = optimize(copy.deepcopy(plain), streams=2)
    with torch.no_grad():
        assert (whole(batch).logits - split(batch).logits).abs().max() < 1e-6
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        expected, got = whole(batch).logits, split(batch).logits
    assert got.dtype == expected.dtype == torch.bfloat16  # the workers ran under the caller's autocast
    assert (expected.float() - got.float()).abs().max() < 1e-6
    assert split_calls and all(kind == "inference" for kind, _ in split_calls)


def test_auto_splits_only_batches_of_four_samples_per_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert streams.streams_for(8) == 2
    assert streams.streams_for(7) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert streams.streams_for(64) == 1
    assert streams.streams_for(2, 3) == 2  # a fixed count: at most one stream per sample
    assert streams.streams_for(16, 1) == 1


@pytest.mark.parametrize("streams_setting", [0, -1, 1.5, "two", True])
def test_streams_setting_is_validated(streams_setting):
    with pytest.raises(ValueError, match="streams must be"):
        optimize(build(), streams=streams_setting)


def _observations():
    """Ways a user watches or changes the layers' calls, each of which must keep the whole
    batch in one call: (name, set-up on the model)."""

    def hook_on_layer(model):
        seen = []
        model.deit.encoder.layer[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        return seen

    def hook_on_linear(model):
        seen = []
        model.deit.encoder.layer[1].intermediate.dense.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[0]))
        return seen

    def dropout_in_training_mode(model):
        dropout = model.deit.encoder.layer[0].attention.output.dropout
        dropout.p = 0.1
        dropout.train()
        return None

    def replaced_forward(model):
        seen = []
        norm = model.deit.encoder.layer[0].layernorm_before
        plain_forward = norm.forward

        def forward(x):
            seen.append(x.shape[0])
            return plain_forward(x)

        norm.forward = forward
        return seen

    return [hook_on_layer, hook_on_linear, dropout_in_training_mode, replaced_forward]


@pytest.mark.parametrize("observe", _observations(), ids=lambda f: f.__name__)
def test_nothing_a_user_watches_is_split(observe, batch, split_calls):
    model = optimize(build(), streams=2)
    seen = observe(model)
    with torch.inference_mode():
        model(batch)
    assert split_calls == []
    if seen is not None:
        assert seen == [batch.shape[0]]


def test_global_hooks_and_function_modes_keep_the_whole_batch(batch, split_calls):
    model = optimize(build(), streams=2)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        handle.remove()
    from torch.utils.flop_counter import FlopCounterMode
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(batch)
    assert split_calls == []
    assert seen.count("DeiTLayer") + seen.count("_OptimizedLayer") == 2
    assert counter.get_total_flops() > 0


def test_training_with_drop_path_keeps_the_whole_batch(batch, split_calls):
    model = optimize(build(drop_path_rate=0.1), streams=2).train()
    model(batch).logits.sum().backward()
    with torch.no_grad():
        model(batch)
    assert split_calls == []


def test_the_callers_thread_count_is_left_alone(batch):
    before = torch.get_num_threads()
    model = optimize(build(), streams=2)
    with torch.inference_mode():
        model(batch)
    assert torch.get_num_threads() == before
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert counts == [before]  # the default for threads started later is put back too


def test_an_error_in_a_stream_reaches_the_caller():
    def fails_on_the_second_part(part: torch.Tensor) -> torch.Tensor:
        if part[0, 0] > 0:
            raise ValueError("bad part")
        return part

    batch = torch.tensor([[-1.0], [-1.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match="bad part"):
        streams.run_in_streams(fails_on_the_second_part, batch, 2)
    assert torch.equal(streams.run_in_streams(lambda part: part * 2, batch, 2), batch * 2)


LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])


def train_once(model, pixels, autocast=False):
    model.train().zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = model(pixels, labels=LABELS).loss
    loss.backward()
    return loss.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_gradients_close(grads, reference, tolerance):
    for g, r in zip(grads, reference):
        assert (g is None) == (r is None)
        if r is not None:
            # Relative to each parameter's largest gradient, floored: the key bias's is zero up to rounding.
            assert (g - r).abs().max() / r.abs().max().clamp_min(1e-4) < tolerance


@pytest.mark.parametrize("count", [2, 3])
def test_training_in_streams_gives_the_whole_batchs_loss_and_gradients(count, batch, split_calls):
    plain = build()
    whole = optimize(copy.deepcopy(plain), streams=1)
    split = optimize(copy.deepcopy(plain), streams=count)
    loss, grads = train_once(whole, batch)
    split_loss, split_grads = train_once(split, batch)
    assert split_calls == [("training", count)]
    assert (loss - split_loss).abs() < 1e-6
    assert_gradients_close(split_grads, grads, 1e-5)
    assert_gradients_close(split_grads, train_once(plain, batch)[1], 1e-4)


def test_training_in_streams_frozen_layers_input_gradients_and_autocast(batch, split_calls):
    plain = build()
    for p in plain.deit.encoder.layer[0].parameters():
        p.requires_grad_(False)
    whole = optimize(copy.deepcopy(plain), streams=1)
    split = optimize(copy.deepcopy(plain), streams=2)
    pixels, split_pixels = batch.clone().requires_grad_(), batch.clone().requires_grad_()
    _, grads = train_once(whole, pixels)
    _, split_grads = train_once(split, split_pixels)
    assert_gradients_close(split_grads, grads, 1e-5)  # frozen ones stay None in both
    assert (pixels.grad - split_pixels.grad).abs().max() <= 1e-5 * pixels.grad.abs().max()
    # bf16 autocast: the workers run under it too
    loss, grads = train_once(whole, batch, autocast=True)
    split_loss, split_grads = train_once(split, batch, autocast=True)
    assert (loss - split_loss).abs() < 1e-2
    assert_gradients_close(split_grads, grads, 2e-2)
    assert split_calls and all(kind == "training" for kind, _ in split_calls)


def test_a_second_backward_through_streams_says_what_to_do(batch):
    model = optimize(build(), streams=2).train()
    loss = model(batch, labels=LABELS).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="streams=1"):
        loss.backward()


def test_training_steps_in_streams_follow_the_whole_batchs(batch):
    """Three SGD steps: the weights stay together (the split changes only rounding). (Not Adam:
    it scales the key bias's gradient, zero up to rounding, to a full step.)"""
    plain = build()
    models = [optimize(copy.deepcopy(plain), streams=n).train() for n in (1, 2)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(batch, labels=LABELS).loss.backward()
            optimizer.step()
    for a, b in zip(*(m.parameters() for m in models)):
        assert (a - b).abs().max() < 1e-5


_forked_model = None


def _streamed_logits(pixels: torch.Tensor, in_child: bool = False) -> torch.Tensor:
    if in_child:
        # As DataLoader workers do: GNU OpenMP hangs in a forked child that uses the parent's
        # thread team (with or without streams).
        torch.set_num_threads(1)
    with torch.inference_mode():
        return _forked_model(pixels).logits


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this system")
def test_streams_work_in_a_forked_child(batch, split_calls):
    """The parent's workers do not exist in a forked child (DataLoader workers): the child makes
    its own instead of waiting forever on the parent's."""
    global _forked_model
    _forked_model = optimize(build(), streams=2)
    expected = _streamed_logits(batch)  # the parent's workers exist now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_streamed_logits, (batch, True)).get(timeout=60)
    assert split_calls == [("inference", 2)]  # (the child's calls are counted in the child)
    assert torch.equal(got, expected)
