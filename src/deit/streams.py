"""Batch streams: an inference batch split into one part per core, each part run on a thread of
its own with single-threaded kernels (the idea of IPEX's multi-stream module), then joined.

Why: with the kernels split across cores, every op ends in a wait for the slowest core, and the
memory-bound ops between the matmuls (LayerNorm, softmax, the residual additions) divide
poorly; one part of the batch per core does the same arithmetic without those waits. Measured
on a 2-core AVX-512 CPU in float32 at batch 16: DeiT-S +3.6 %, DeiT-Ti +8 % (BENCHMARKS.md).
Each sample's result is what it is in the whole batch: the kernels work row by row (bit-equal
on that CPU).

The workers are this module's threads, made single-threaded once (``torch.set_num_threads``
acts on the calling thread's OpenMP and MKL settings); the caller's thread count is left as it
was. The caller waits while they run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

__all__ = ["streams_for", "run_in_streams", "MIN_SAMPLES_PER_STREAM"]

# Fewer samples per stream leave each matmul too small to gain: DeiT-S at batch 4 in two
# streams measured -2 % to +3 %, at batch 8 +3 % to +8 %.
MIN_SAMPLES_PER_STREAM = 4

_lock = threading.Lock()
_workers: ThreadPoolExecutor | None = None
_worker_count = 0
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
    """The pool of ``count`` single-threaded workers (made on first use); None where PyTorch's
    thread settings are not per thread (a parallel backend other than OpenMP): the streams would
    then oversubscribe the cores."""
    global _workers, _worker_count, _single_threaded
    with _lock:
        if _workers is not None and _worker_count == count:
            return _workers
        if not _single_threaded:
            return None
        if _workers is not None:
            _workers.shutdown(wait=False)
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
        _workers, _worker_count = workers, count
        return workers


def _forget_workers() -> None:
    # A forked child (DataLoader workers) has none of the parent's threads.
    global _workers, _worker_count
    _workers, _worker_count = None, 0


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
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def run(part: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.inference_mode(inference), \
                torch.autocast("cpu", autocast) if autocast is not None else contextlib.nullcontext():
            return function(part)

    futures = [workers.submit(run, part) for part in batch.tensor_split(streams)]
    return torch.cat([future.result() for future in futures])
