"""What this CPU's kernels can do and which are faster here, measured on first use.

The fast CPU kernels (:mod:`deit.kernels`) are oneDNN matmuls. Two choices depend on the
processor, and both are measured rather than guessed from its name, once per process, when a
caller first asks (nothing runs at import):

* bfloat16 matmuls: oneDNN's bf16 kernel wins by 2x or more on AMX and AMD Zen 4/5 CPUs and
  loses by about 1.8x on Intel AVX-512 BF16 CPUs without AMX (the bf16 dot-product instruction
  has half the issue ports of the float32 FMA); there the bf16 operands are multiplied in
  float32 arithmetic instead (exactly: each product is the one the bf16 kernel computes).
  ``DEIT_BF16_MATMUL=bf16|fp32`` fixes the choice.
* float32 matmuls: PyTorch's default (MKL) ran 2.3x below oneDNN on one AMD Zen 4 machine,
  1.15-1.4x below on others, even with it on Intel ones, and 1.1x *above* it on an AMD Zen 3
  (AVX2). :func:`onednn_fp32_speedup` measures the ratio; inference uses oneDNN wherever it is
  the faster (:func:`onednn_fp32_wins`; ``DEIT_ONEDNN_FP32=1|0`` fixes the answer). Training
  measures its own step instead (:func:`deit.train.fast_kernels.training_kernels_win`).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Callable

import torch

__all__ = ["cpu_model_name", "cpu_description", "fast_kernels_available", "bf16_kernels_available", "bf16_matmul_is_fast", "onednn_fp32_speedup", "onednn_fp32_wins",
           "best_seconds", "fastest", "BF16_MATMUL_MODES"]

# How bfloat16 matmuls are computed: "bf16" (oneDNN's bf16 kernel, where the CPU has one), "fp32"
# (float32 arithmetic on the bf16 operands), or "auto" (the faster here).
BF16_MATMUL_MODES = ("auto", "bf16", "fp32")


def cpu_model_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_description() -> str:
    """This CPU as far as a measured choice depends on it: its model name, the SIMD level PyTorch
    dispatches to, and the number of logical cores."""
    return f"{cpu_model_name()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"


def fast_kernels_available() -> bool:
    """Whether this PyTorch build has the oneDNN matmul-with-epilogue kernel used on the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def bf16_kernels_available() -> bool:
    """Whether oneDNN multiplies bfloat16 matrices on this CPU at all (AVX-512 BF16, AVX-NE-CONVERT
    or AMX). Elsewhere (AVX2 CPUs) bfloat16 matmuls run in float32 arithmetic: PyTorch's own
    bf16 matmul emulates the format about 7x below float32 there."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return fast_kernels_available() and supported is not None and supported()


@functools.cache
def bf16_matmul_is_fast() -> bool:
    """Whether oneDNN multiplies bfloat16 matrices faster than float32 ones on this CPU (best
    of seven interleaved rounds on DeiT-S's first MLP Linear, about 100 ms; ``DEIT_BF16_MATMUL``
    skips it)."""
    forced = os.environ.get("DEIT_BF16_MATMUL", "auto")
    if forced not in BF16_MATMUL_MODES:
        raise ValueError(f"DEIT_BF16_MATMUL must be one of {', '.join(BF16_MATMUL_MODES)}, got {forced!r}")
    if not bf16_kernels_available():
        return False  # nothing to choose: bf16 matmuls can only run in float32 arithmetic here
    if forced != "auto":
        return forced == "bf16"
    x, w = _probe_operands()
    calls = {str(dtype): _onednn_call(x.to(dtype), torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), x.shape[0]))
             for dtype in (torch.float32, torch.bfloat16)}
    seconds = best_seconds(calls)
    return seconds[str(torch.bfloat16)] < seconds[str(torch.float32)]


@functools.cache
def onednn_fp32_speedup() -> float:
    """How many times faster oneDNN's float32 matmul (prepacked weight) is than PyTorch's default
    one (``F.linear``, MKL) here: best of seven interleaved rounds on DeiT-S's first MLP Linear
    (1024 rows), about 100 ms. ``DEIT_ONEDNN_FP32=1`` makes it infinite, ``0`` zero (no measurement); 0 without oneDNN."""
    forced = os.environ.get("DEIT_ONEDNN_FP32")
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"DEIT_ONEDNN_FP32 must be 0 or 1, got {forced!r}")
        return float("inf") if forced == "1" else 0.0
    if not fast_kernels_available():
        return 0.0
    x, w = _probe_operands()
    seconds = best_seconds({"onednn": _onednn_call(x, torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])),
                            "default": lambda: torch.nn.functional.linear(x, w)})
    return seconds["default"] / seconds["onednn"]


def onednn_fp32_wins() -> bool:
    """Whether float32 inference matmuls should run on oneDNN (prepacked weights, fused epilogues)
    rather than PyTorch's default: oneDNN is the faster here (:func:`onednn_fp32_speedup` > 1)."""
    return onednn_fp32_speedup() > 1.0


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Input and weight of the probes' matmul: DeiT-S's first MLP Linear on 1024 tokens. Drawn
    from their own generator: a probe may run mid-training and must not move the global random
    state."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1024, 384, generator=generator), torch.randn(1536, 384, generator=generator)


def _onednn_call(x: torch.Tensor, packed: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def best_seconds(calls: dict[str, Callable[[], object]], rounds: int = 7) -> dict[str, float]:
    """Each call's fastest time: after one untimed call each (oneDNN builds its kernel on the
    first), ``rounds`` rounds of one timed call each, in turn, so that a slow moment of a shared
    machine hits all alike."""
    best = dict.fromkeys(calls, float("inf"))
    for run in calls.values():
        run()
    for _ in range(rounds):
        for name, run in calls.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def fastest(calls: dict[str, Callable[[], object]], rounds: int = 3) -> str:
    """The name of the fastest of ``calls`` (:func:`best_seconds`)."""
    seconds = best_seconds(calls, rounds)
    return min(seconds, key=seconds.__getitem__)
