"""Batch streams: a batch split into one part per core, each part run on a thread of its own
with single-threaded kernels (the idea of IPEX's multi-stream module), then joined; in
inference (:func:`run_in_streams`) and in training, forward and backward
(:func:`train_in_streams`).

Why: with the kernels split across cores, every op ends in a wait for the slowest core, and the
memory-bound ops between the matmuls (LayerNorm, softmax, the residual additions) divide
poorly; one part of the batch per core does the same arithmetic without those waits. Measured
on a 2-core AVX-512 CPU in float32 (interleaved A/B, BENCHMARKS.md): inference at batch 16
DeiT-S +2-3 %, DeiT-Ti +3-8 %; a DeiT-Ti training step at batch 32 +4.5 %. Each sample's result is what it is in the
whole batch: the kernels work row by row (bit-equal on that CPU); the parameters' gradients
are the parts' gradients summed, in part order (the same up to rounding, and deterministic).

The workers are this module's threads, made single-threaded once (``torch.set_num_threads``
acts on the calling thread's OpenMP and MKL settings); the caller's thread count is left as it
was. The caller waits while they run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import torch
from torch.autograd.function import once_differentiable

__all__ = ["streams_for", "run_in_streams", "train_in_streams", "MIN_SAMPLES_PER_STREAM"]

# Fewer samples per stream leave each matmul too small to gain: DeiT-S at batch 4 in two
# streams measured -2 % to +3 %, at batch 8 +3 % to +8 %.
MIN_SAMPLES_PER_STREAM = 4

_lock = threading.Lock()
# Single-threaded worker pools by size, made on first use and kept (idle threads cost nothing;
# replacing a pool could pull it from under another thread's call).
_pools: dict[int, ThreadPoolExecutor] = {}
_single_threaded = True  # False once a worker could not be made single-threaded


def streams_for(batch_size: int, setting: int | str = "auto") -> int:
    """How many streams to run a batch of ``batch_size`` in: ``setting`` when it is a number
    (at most one sample each), else ("auto") one per intra-op thread when each gets at least
    :data:`MIN_SAMPLES_PER_STREAM` samples, else 1 (one stream: the batch as usual)."""
    if setting != "auto":
        return max(1, min(int(setting), batch_size))
    threads = torch.get_num_threads()
    return threads if threads > 1 and batch_size >= MIN_SAMPLES_PER_STREAM * threads else 1


def _make_single_threaded(barrier: threading.Barrier) -> int:
    torch.set_num_threads(1)
    barrier.wait()  # one call per worker thread: each waits until all have theirs
    return torch.get_num_threads()


def _single_threaded_workers(count: int) -> ThreadPoolExecutor | None:
    """The pool of ``count`` single-threaded workers; None where PyTorch's thread settings are
    not per thread (a parallel backend other than OpenMP): the streams would then oversubscribe
    the cores."""
    global _single_threaded
    with _lock:
        if count in _pools:
            return _pools[count]
        if not _single_threaded:
            return None
        threads = torch.get_num_threads()
        workers = ThreadPoolExecutor(count, thread_name_prefix="deit-stream")
        barrier = threading.Barrier(count)
        counts = [f.result() for f in [workers.submit(_make_single_threaded, barrier) for _ in range(count)]]
        # set_num_threads also set the default for threads started later: put it back.
        torch.set_num_threads(threads)
        if any(c != 1 for c in counts):
            _single_threaded = False
            workers.shutdown(wait=False)
            return None
        _pools[count] = workers
        return workers


def _forget_workers() -> None:
    # A forked child (DataLoader workers) has none of the parent's threads, and a lock held
    # by one of them at the fork would stay held.
    global _lock
    _lock = threading.Lock()
    _pools.clear()


os.register_at_fork(after_in_child=_forget_workers)


def run_in_streams(function: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, streams: int) -> torch.Tensor:
    """``function(batch)``, computed as ``function`` of ``streams`` parts of the batch (split
    along the first dimension) on as many single-threaded workers, joined in order. For
    functions that treat every sample on its own, in inference (gradients off). The workers
    run under the caller's inference mode and CPU autocast; an exception in one is raised here.
    Falls back to one call where single-threaded workers cannot be had."""
    workers = _single_threaded_workers(streams) if streams > 1 else None
    if workers is None:
        return function(batch)
    inference = torch.is_inference_mode_enabled()
    autocast = _callers_autocast()

    def run(part: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.inference_mode(inference), autocast():
            return function(part)

    return torch.cat(_each(workers, run, batch.tensor_split(streams)))


def _callers_autocast() -> Callable[[], contextlib.AbstractContextManager]:
    """The calling thread's CPU autocast, to enter on a worker (autocast is per thread)."""
    if not torch.is_autocast_enabled("cpu"):
        return contextlib.nullcontext
    dtype = torch.get_autocast_dtype("cpu")
    return lambda: torch.autocast("cpu", dtype)


def _each(workers: ThreadPoolExecutor, function: Callable, items: Iterable) -> list:
    """``[function(item) for item in items]``, one item per worker; the first error is raised."""
    return [future.result() for future in [workers.submit(function, item) for item in items]]


def train_in_streams(function: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, streams: int,
                     parameters: list[torch.Tensor]) -> torch.Tensor:
    """``function(batch)`` with gradients, computed in ``streams`` parts of the batch on as many
    single-threaded workers, forward and backward (each part's backward on its worker);
    ``parameters`` are every tensor ``function`` uses that may need a gradient. For functions
    that treat every sample on its own and draw no random numbers (the order in which the
    workers would draw them is not fixed). One backward per forward, and no double backward
    (``create_graph``): a second one through the same graph raises. Parameter hooks and
    gradient accumulation see one gradient per parameter, the parts' sum. Falls back to one call where single-threaded workers cannot be had."""
    workers = _single_threaded_workers(streams) if streams > 1 else None
    if workers is None:
        return function(batch)
    return _StreamedFunction.apply(function, workers, streams, batch, *parameters)


class _StreamedFunction(torch.autograd.Function):
    """Forward: each part through ``function`` on its worker, recording a graph there.
    Backward: each part's graph on its worker; the input's gradient joined, the parameters'
    summed."""

    @staticmethod
    def forward(ctx: Any, function: Callable[[torch.Tensor], torch.Tensor], workers: ThreadPoolExecutor, streams: int,
                batch: torch.Tensor, *parameters: torch.Tensor) -> torch.Tensor:
        autocast = _callers_autocast()
        needs_batch_grad = batch.requires_grad

        def run(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad(), autocast():
                part = part.detach().requires_grad_(needs_batch_grad)
                return part, function(part)

        ctx.parts = _each(workers, run, batch.detach().tensor_split(streams))
        ctx.workers = workers
        ctx.parameters = parameters
        return torch.cat([output.detach() for _, output in ctx.parts])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.parts is None:
            raise RuntimeError("backward through the streamed encoder a second time: its graph is freed after the first "
                               "(optimize the model with streams=1 to keep it, retain_graph=True)")
        parts, ctx.parts = ctx.parts, None  # each part's graph is freed by its backward
        wanted = [i for i, parameter in enumerate(ctx.parameters) if parameter.requires_grad]
        sources = [ctx.parameters[i] for i in wanted]
        needs_batch_grad = ctx.needs_input_grad[3]

        def run(item: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
            (part, output), grad = item
            inputs = [part, *sources] if needs_batch_grad else [*sources]
            grads = torch.autograd.grad(output, inputs, grad, allow_unused=True)
            return grads if needs_batch_grad else (None, *grads)

        grads = _each(ctx.workers, run, zip(parts, grad_output.tensor_split(len(parts))))
        parameter_grads: list[torch.Tensor | None] = [None] * len(ctx.parameters)
        for j, i in enumerate(wanted):
            for part_grads in grads:
                g = part_grads[j + 1]
                if g is not None:
                    parameter_grads[i] = g if parameter_grads[i] is None else parameter_grads[i] + g
        batch_grad = torch.cat([part_grads[0] for part_grads in grads]) if needs_batch_grad else None
        return (None, None, None, batch_grad, *parameter_grads)
