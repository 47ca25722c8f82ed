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
  1.15-1.4x below on others, and even with it on Intel ones. ``DEIT_ONEDNN_FP32=1|0`` fixes
  the answer.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable

import torch

__all__ = ["fast_kernels_available", "bf16_kernels_available", "bf16_matmul_is_fast", "onednn_fp32_is_fast", "BF16_MATMUL_MODES"]

# How bfloat16 matmuls are computed: "bf16" (oneDNN's bf16 kernel, where the CPU has one), "fp32"
# (float32 arithmetic on the bf16 operands), or "auto" (the faster here).
BF16_MATMUL_MODES = ("auto", "bf16", "fp32")


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
    """Whether oneDNN multiplies bfloat16 matrices faster than float32 ones on this CPU (about
    50 ms, best of five each, on DeiT-S's first MLP Linear; ``DEIT_BF16_MATMUL`` skips it)."""
    forced = os.environ.get("DEIT_BF16_MATMUL", "auto")
    if forced not in BF16_MATMUL_MODES:
        raise ValueError(f"DEIT_BF16_MATMUL must be one of {', '.join(BF16_MATMUL_MODES)}, got {forced!r}")
    if not bf16_kernels_available():
        return False  # nothing to choose: bf16 matmuls can only run in float32 arithmetic here
    if forced != "auto":
        return forced == "bf16"
    x, w = _probe_operands()
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        x_cast, packed = x.to(dtype), torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), x.shape[0])
        seconds[dtype] = _best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x_cast, packed, None, "none", [], ""))
    return seconds[torch.bfloat16] < seconds[torch.float32]


@functools.cache
def onednn_fp32_is_fast() -> bool:
    """Whether oneDNN's float32 matmul beats PyTorch's default one (MKL) by 1.5x or more here
    (measured like :func:`bf16_matmul_is_fast`; ``DEIT_ONEDNN_FP32=1|0`` skips it). The bar is
    high because a training step is more than its matmuls: at a 1.15-1.4x matmul ratio the
    DeiT-Ti training step ran 3 % slower to 8 % faster on oneDNN (BENCHMARKS.md)."""
    forced = os.environ.get("DEIT_ONEDNN_FP32")
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"DEIT_ONEDNN_FP32 must be 0 or 1, got {forced!r}")
        return forced == "1"
    if not fast_kernels_available():
        return False
    x, w = _probe_operands()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    onednn = _best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
    default = _best_seconds(lambda: torch.nn.functional.linear(x, w))
    return onednn * 1.5 <= default


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Input and weight of the probes' matmul: DeiT-S's first MLP Linear on 1024 tokens. Drawn
    from their own generator: a probe may run mid-training and must not move the global random
    state."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1024, 384, generator=generator), torch.randn(1536, 384, generator=generator)


def _best_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed call (oneDNN builds its kernel
    on the first)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
