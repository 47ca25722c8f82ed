"""CPU speed-ups that keep the model's parameters, names and outputs: :func:`optimize`.

On the CPU the eager model loses time outside the useful arithmetic, and PyTorch's float32
matrix products go through MKL, which on non-Intel processors runs far below the machine's
AVX-512 speed. :func:`optimize` switches the modules to oneDNN kernels:

* every Linear is one oneDNN matmul with the bias (and, after the MLP's first Linear, the
  GELU) applied in the kernel's epilogue, on a weight prepacked once for the CPU's GEMM;
* query, key and value are one GEMM on their concatenated weights (the softmax scale folded
  into the query rows); attention then reads q, k and v from that one output, in bfloat16
  two samples at a time so the scores stay in cache (about twice as fast as PyTorch's fused
  SDPA kernel at DeiT's 198 tokens on AMD Zen 4), in float32 with the SDPA kernel on strided
  views (no copies);
* the patch embedding (a convolution with stride = kernel) is one GEMM over the patches;
* in inference each block calls its parts directly (not through ``nn.Module.__call__`` and the
  wrapper modules) and, in float32, adds the residual in the output Linears' epilogue;
* on a batch of at least 4 samples per thread, the encoder runs one part of the batch per
  thread, each on a single-threaded worker (:mod:`deit.streams`), in inference and in
  training: the same results, without the cores waiting for each other after every op;
* nothing a user set up is skipped: a module whose call the fast path would leave out runs as
  usual when it has forward or backward hooks (or global module hooks exist), a ``forward``
  replaced on the instance or a class of its own (adapters swapped in after optimizing), a
  parametrized weight or bias, or training mode (Monte Carlo dropout); a patch convolution
  other than DeiT's (padding, other stride) runs as a convolution;
* in training (gradients on), the Linear layers' forward and both backward matmuls run on
  oneDNN too, through a small autograd function, and attention is the same computation as in
  inference (autograd through it); GELU, LayerNorm and the rest keep PyTorch's kernels;
* on CPUs where MKL's float32 GEMM is as fast as oneDNN's (Intel), float32 training uses
  PyTorch's own kernels, which train faster there (:func:`onednn_fp32_is_fast`); under bf16
  autocast the Linear layers (q/k/v as one) still run on oneDNN and attention on float32 SDPA;
* in bfloat16 (inference, and the Linear layers under bf16 autocast in training), on CPUs
  where oneDNN multiplies bfloat16 matrices more slowly than
  float32 ones (Intel CPUs with AVX-512 BF16 but no AMX: the bf16 dot-product instruction has
  half the issue ports of the float32 FMA), the matrix products take their bf16 operands
  widened to float32 -- exactly, so each product is the one the bf16 kernel computes, and the
  sum is accumulated in float32 as there. Attention, between the q/k/v and the output
  projection, then runs in float32, and in inference the attention context and the MLP's
  hidden activation go on to the next matmul in float32: what is rounded to bfloat16 is what
  the model keeps in bfloat16, the residual stream (each block's two branch outputs) and the
  LayerNorm outputs (forward hooks on a block's attention or MLP-intermediate module see those
  float32 tensors).
  Which CPUs these are is measured once per process (:func:`bf16_matmul_is_fast`); the
  ``bf16_matmul`` argument of :func:`optimize` fixes the choice. On CPUs without any bf16
  matmul instruction (AVX2 only, e.g. AMD Zen 3: :func:`bf16_kernels_available` is false)
  oneDNN cannot multiply bf16 and PyTorch's own bf16 matmul emulates the format about 7x more
  slowly than float32: there the bf16 matmuls always run in this float32 arithmetic.

The parameters stay where they are, with their Hugging Face names, so ``state_dict``,
``save_pretrained`` and ``load_state_dict`` see no difference, and outputs match the plain
model up to floating-point rounding. While ``torch.compile`` or ``torch.export`` trace the
model, under ``torch.func`` transforms (``vmap``, ``grad``), and on other devices, every module
runs its ordinary code. Cached (packed, cast, concatenated) weights are rebuilt when their
parameter changes (in place: its version counter moves; ``load_state_dict``, ``.to``) and after
any optimizer step (fused optimizers do not move version counters). Writes through
``param.data`` move nothing, and parameters created under ``torch.inference_mode`` carry no
version counter: after changing those in place call :func:`optimize` again.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks
from torch.optim.optimizer import register_optimizer_step_post_hook

from .dtypes import to_dtype
from .modeling import (DeiTAttention, DeiTEncoder, DeiTIntermediate, DeiTLayer, DeiTOutput, DeiTPatchEmbeddings,
                       DeiTPreTrainedModel, DeiTSelfAttention, DeiTSelfOutput, DropPath, activation)
from .streams import run_in_streams, streams_for, train_in_streams

__all__ = ["optimize", "fast_kernels_available", "install_fast_kernels", "bf16_kernels_available", "bf16_matmul_is_fast",
           "onednn_fp32_is_fast", "PARTS", "BF16_MATMUL_MODES"]

# oneDNN post-op (attr, algorithm) of the activations it can fuse after a matmul.
_FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
                      "gelu_fast": ("gelu", "tanh"), "relu": ("relu", ""), "silu": ("swish", ""), "swish": ("swish", "")}
# Samples per attention chunk: the best measured for DeiT-Ti/S/B at 198 tokens on a 2-core
# AVX-512 CPU (one sample leaves the batched matmuls too small, four spill the L2 cache).
_SAMPLES_PER_CHUNK = 2


def fast_kernels_available() -> bool:
    """Whether this PyTorch build has the oneDNN matmul-with-epilogue kernel used on the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def bf16_kernels_available() -> bool:
    """Whether oneDNN multiplies bfloat16 matrices on this CPU at all (AVX-512 BF16, AVX-NE-CONVERT
    or AMX). Elsewhere (AVX2 CPUs) the fast kernels compute bfloat16 matmuls in float32
    arithmetic, while PyTorch's own bf16 matmul emulates the format about 7x below float32."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return fast_kernels_available() and supported is not None and supported()


# The dtypes the fast kernels compute in (bfloat16 in float32 arithmetic where oneDNN has no bf16).
_FAST_DTYPES = frozenset({torch.float32, torch.bfloat16})


# How bfloat16 matmuls are computed: "bf16" (oneDNN's bf16 kernel, where the CPU has one), "fp32"
# (float32 arithmetic on the widened bf16 operands, see the module docstring), or "auto" (the
# faster here).
BF16_MATMUL_MODES = ("auto", "bf16", "fp32")


@functools.cache
def bf16_matmul_is_fast() -> bool:
    """Whether oneDNN multiplies bfloat16 matrices faster than float32 ones on this CPU.

    Measured once per process (about 50 ms) on a matmul of DeiT's shapes, best of five each:
    on AMX or AMD Zen 4 CPUs bf16 wins by 2x or more, on Intel AVX-512 BF16 without AMX it loses
    by about 1.8x, so the margin either way is wide. The environment variable
    ``DEIT_BF16_MATMUL=bf16|fp32`` skips the measurement.
    """
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
        seconds[dtype] = _best_seconds(lambda: _matmul(x_cast, packed))
    return seconds[torch.bfloat16] < seconds[torch.float32]


@functools.cache
def onednn_fp32_is_fast() -> bool:
    """Whether oneDNN's float32 matmul beats PyTorch's default one (MKL) by 25 % or more here.

    Measured once per process like :func:`bf16_matmul_is_fast`: on AMD CPUs MKL runs about 2x
    below oneDNN, on Intel CPUs the two are even. Where this does not hold, float32 training
    runs PyTorch's own kernels, which then train faster (SDPA has a fused backward); inference
    and bf16 autocast keep the oneDNN kernels (fused q/k/v and GELU, bf16 in float32 arithmetic
    still pay). ``DEIT_ONEDNN_FP32=1|0`` skips the measurement.
    """
    forced = os.environ.get("DEIT_ONEDNN_FP32")
    if forced is not None:
        return forced == "1"
    x, w = _probe_operands()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    onednn = _best_seconds(lambda: _matmul(x, packed))
    default = _best_seconds(lambda: torch.nn.functional.linear(x, w))
    return onednn * 1.25 <= default


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Input and weight of the probes' matmul: DeiT-S's first MLP Linear on 1024 tokens. Drawn
    from their own generator: a probe runs on first use, maybe mid-training, and must not move
    the global random state."""
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


def _kernel_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a module computes ``x`` in (autocast's when it is on, else ``x``'s) when the fast
    kernels can run it: on the CPU, outside tracing, in float32 or bfloat16; else None.
    Python checks of global state and dtypes, not of tensor data, so tracing (compile/export)
    sees the plain code; one function because every module call makes them (at batch 1 a
    matmul takes only some 50 us)."""
    if not x.is_cpu or torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return None  # (functorch transforms, vmap / grad: tensors without storage to cache on)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype if dtype in _FAST_DTYPES else None


def _trains_on_kernel(dtype: torch.dtype) -> bool:
    """Whether training (gradients on) runs a Linear (or the patch GEMM) computing in ``dtype``
    on the oneDNN kernel: float32 only where oneDNN beats MKL (:func:`onednn_fp32_is_fast`),
    elsewhere PyTorch's own kernels train faster; bf16 always, the kernel is also what computes
    it in float32 arithmetic where that is faster."""
    return dtype != torch.float32 or onednn_fp32_is_fast()


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: tuple[str, str] = ("none", ""),
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(x @ weight.T + bias)``, or ``x @ weight.T + bias + residual``, in one oneDNN
    call (``weight`` plain or prepacked)."""
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation[0], [], activation[1])


def _version(t: torch.Tensor) -> int:
    # Inference tensors (made under torch.inference_mode) have no version counter: their storage
    # identifies them, and an in-place change inside inference mode goes unseen (the module
    # docstring says to call optimize again then). (try: is_inference() costs as much as _version.)
    try:
        return t._version
    except RuntimeError:
        return -1


def _registered(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(module.weight, module.bias)`` as registered, read from ``_parameters`` (through
    ``nn.Module.__getattr__`` a lookup costs 0.6 us, and a block reads a dozen per call: a few %
    of DeiT-Ti's time at batch 1); None when either is computed on access (a
    parametrization): the packed-weight cache could not tell when it changes (under inference
    mode a recomputed weight has no version counter and may reuse the old one's memory), so
    such a module runs its ordinary code."""
    params = module._parameters
    if "weight" not in params or "bias" not in params:  # a bias=False Linear registers bias as None
        return None
    return params["weight"], params["bias"]


def _global_hooks() -> bool:
    """Whether global module hooks (``register_module_forward_hook`` and the like) want to see
    every module call."""
    return bool(_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks)


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks of its own."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks)


def _skippable(module: nn.Module, expected: tuple[type[nn.Module], ...]) -> bool:
    """Whether not calling ``module`` (computing its result here instead) skips nothing a user
    set up: it is of one of the ``expected`` classes (not a subclass with a ``forward`` of its
    own, as adapters are), without hooks, and without a ``forward`` replaced on the instance
    (as accelerate does). (Some twenty checks per block and call: written out, not via _hooked.)"""
    return (type(module) in expected and not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                                              or module._backward_pre_hooks) and "forward" not in module.__dict__)


# Optimizer steps taken in this process, by any optimizer: part of every cached weight's key.
# Fused optimizers (AdamW(fused=True)) update parameters in place without moving their version
# counters, so a step is the only sign of the change.
_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # ``t.to(dtype)`` without its dispatch cost (about 1 us) when there is nothing to convert:
    # at batch 1 a Linear's matmul takes only some 50 us.
    return t if t.dtype == dtype else t.to(dtype)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class _PackedLinear:
    """The inference kernel of one (possibly concatenated) Linear: its weight packed for the
    CPU's GEMM and its bias cast, derived from the parameters on first use and again whenever
    one of them changes (an optimizer step, ``load_state_dict``, ``.to``). The derived tensors
    are not copied with the module: a copy (or an unpickled module) derives its own."""

    def __init__(self, bf16_matmul: str, prepare: Callable[[torch.Tensor], torch.Tensor] = _identity) -> None:
        self.bf16_matmul = bf16_matmul  # one of BF16_MATMUL_MODES
        self.prepare = prepare  # applied to the joined weight and bias before packing
        self._forget()

    def _forget(self) -> None:
        # (key, (packed weight, cast bias)) in one attribute: read and replaced whole, so calls
        # from several threads never pair one key with another's tensors.
        self._cache: tuple[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __deepcopy__(self, memo: dict) -> "_PackedLinear":
        # ``prepare`` may be a bound method of the owning module: the copy's must be the copy's.
        return _PackedLinear(self.bf16_matmul, copy.deepcopy(self.prepare, memo))

    def __getstate__(self) -> dict:
        return {"bf16_matmul": self.bf16_matmul, "prepare": self.prepare}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forget()

    def arithmetic_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the matmul runs in for a Linear computing in ``dtype``."""
        if dtype != torch.bfloat16:
            return dtype
        if not bf16_kernels_available():
            return torch.float32  # oneDNN has no bf16 matmul on this CPU, whatever the mode
        return torch.float32 if self.bf16_matmul == "fp32" or (self.bf16_matmul == "auto" and not bf16_matmul_is_fast()) else dtype

    def _derive(self, weights: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...] | None, dtype: torch.dtype,
                arithmetic: torch.dtype, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(packed weight, cast bias). ``prepare`` runs in float32 and the result rounds once, to
        ``dtype``: a folded scale is rounded as the bf16 kernel would see it, even when the
        arithmetic is float32."""
        def cast(sources: tuple[torch.Tensor, ...]) -> torch.Tensor:
            joined = sources[0] if len(sources) == 1 else torch.cat(sources)
            return self.prepare(joined.detach().float()).to(dtype).to(arithmetic)

        # Packing is chosen for this many rows; other row counts still work.
        packed = torch.ops.mkldnn._reorder_linear_weight(cast(weights), rows)
        return packed, None if biases is None else cast(biases)

    def __call__(self, x: torch.Tensor, dtype: torch.dtype, weights: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...] | None,
                 activation: tuple[str, str] = ("none", ""), round_result: bool = True,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        """The Linear's result in its compute dtype ``dtype`` (:func:`_kernel_dtype`; bf16 for a
        float32 input handed over to bf16 weights), or, with ``round_result=False``, in the
        matmul's arithmetic dtype (float32 for bfloat16 computed in float32). ``residual`` (float32
        only, where the sum in the epilogue is exactly the separate addition): added to it."""
        handed_over = dtype == torch.float32 and weights[0].dtype == torch.bfloat16
        if handed_over:
            # A float32 activation from the kernel before (bf16 computed in float32, see
            # install_fast_kernels): this Linear is still a bf16 one, its input is not rounded.
            dtype = torch.bfloat16
        arithmetic = self.arithmetic_dtype(dtype)
        # Checked on every call, in one pass.
        sources = weights if biases is None else weights + biases
        key = (dtype, arithmetic, _optimizer_steps, *[(t.data_ptr(), _version(t)) for t in sources])
        cache = self._cache
        if cache is None or cache[0] != key:
            cache = self._cache = (key, self._derive(weights, biases, dtype, arithmetic, x.numel() // x.shape[-1]))
        packed, bias = cache[1]
        result = _matmul(_cast(x if handed_over else _cast(x, dtype), arithmetic), packed, bias, activation, residual)
        return _cast(result, dtype) if round_result else result


class _OneDNNLinearFunction(torch.autograd.Function):
    """``x @ weight.T + bias`` with the forward and both backward matmuls on oneDNN, each in
    ``arithmetic`` (float32 for bf16 operands on CPUs where that is faster) and rounded to the
    operands' dtype."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, arithmetic: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.arithmetic = arithmetic
        bias = None if bias is None else bias.to(arithmetic)
        return _matmul(x.to(arithmetic), weight.to(arithmetic), bias).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        arithmetic = ctx.arithmetic
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul(grad_2d.to(arithmetic), weight.t().to(arithmetic).contiguous()).view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(grad_2d.to(arithmetic), x.reshape(-1, x.shape[-1]).to(arithmetic)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0)
        return grad_x, grad_weight, grad_bias, None


def _weight_gradient(grad_2d: torch.Tensor, x_2d: torch.Tensor) -> torch.Tensor:
    """``grad^T @ x``, the (out, in) weight gradient, by whichever kernel is fastest (measured):
    PyTorch's matmul for reduced precision (already oneDNN there); for float32 oneDNN on the
    transposed views (no copies), with the smaller dimension as the output's rows."""
    if grad_2d.dtype != torch.float32:
        return torch.mm(grad_2d.t(), x_2d)
    if grad_2d.shape[1] <= x_2d.shape[1]:
        return _matmul(grad_2d.t(), x_2d.t())
    return _matmul(x_2d.t(), grad_2d.t()).t().contiguous()


def _trainable_linear(x: torch.Tensor, dtype: torch.dtype, weight: torch.Tensor, bias: torch.Tensor | None, kernel: "_PackedLinear") -> torch.Tensor:
    if dtype != weight.dtype or dtype != x.dtype:
        # What autocast does for F.linear; the casts are recorded, so gradients reach float32.
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _OneDNNLinearFunction.apply(x, weight, bias, kernel.arithmetic_dtype(dtype))


class _OptimizedLinear(nn.Linear):
    """``nn.Linear`` on oneDNN kernels (same parameters)."""

    def _init_fast(self, bf16_matmul: str) -> None:
        self._kernel = _PackedLinear(bf16_matmul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _kernel_dtype(x)
        if dtype is None or (torch.is_grad_enabled() and not _trains_on_kernel(dtype)):
            return super().forward(x)
        if torch.is_grad_enabled():
            return _trainable_linear(x, dtype, self.weight, self.bias, self._kernel)
        params = _registered(self)
        if params is None:
            return super().forward(x)
        weight, bias = params
        return self._kernel(x, dtype, (weight,), None if bias is None else (bias,))

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, for a caller that skips this module's ``__call__`` (checked
        :func:`_skippable`); in float32 inference the sum is the matmul's epilogue (the same
        float32 addition, one pass over the output less)."""
        params = _registered(self)
        if (params is not None and params[0].dtype is torch.float32 and residual.dtype is torch.float32
                and _kernel_dtype(x) is torch.float32 and not torch.is_grad_enabled()):
            weight, bias = params
            return self._kernel(x, torch.float32, (weight,), None if bias is None else (bias,), residual=residual)
        return residual + self.forward(x)


# What a Linear we compute ourselves may be: plain, or ours.
_LINEARS = (nn.Linear, _OptimizedLinear)


def _hands_over(target: tuple[nn.Module, nn.Module] | None) -> bool:
    """Whether the Linear that ``install_fast_kernels`` found after a module, ``(its parent,
    the Linear)``, is still in place: it then takes its input in float32 (bf16 weights
    computed in float32, see install_fast_kernels). A Linear swapped in later takes bf16."""
    return target is not None and target[0]._modules.get("dense") is target[1]


class _OptimizedIntermediate(DeiTIntermediate):
    """The MLP's first Linear with its activation fused into the matmul (inference)."""

    def _init_fast(self, bf16_matmul: str) -> None:
        self._kernel = _PackedLinear(bf16_matmul)
        self._activation = _FUSED_ACTIVATIONS[self.hidden_act]
        # The activation module the fused one stands for: another one swapped in runs as it is.
        expected = activation(self.hidden_act)
        self._activation_type, self._activation_approximate = type(expected), expected.__dict__.get("approximate")
        self._hand_over_to: tuple[nn.Module, nn.Module] | None = None  # set by install_fast_kernels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = _kernel_dtype(hidden_states)
        modules = self._modules
        dense, act = modules["dense"], modules["intermediate_act_fn"]
        params = None if dtype is None or torch.is_grad_enabled() else _registered(dense)
        if (params is None or _global_hooks() or not _skippable(dense, _LINEARS) or not _skippable(act, (self._activation_type,))
                or act.__dict__.get("approximate") != self._activation_approximate):
            return super().forward(hidden_states)  # training keeps the pre-activation for backward
        weight, bias = params
        return self._kernel(hidden_states, dtype, (weight,), None if bias is None else (bias,), self._activation,
                            round_result=not _hands_over(self._hand_over_to))


class _OptimizedSelfAttention(DeiTSelfAttention):
    """Query, key and value as one GEMM, then attention on views of its output (see _attention)."""

    def _init_fast(self, bf16_matmul: str) -> None:
        self._kernel = _PackedLinear(bf16_matmul, prepare=self._scale_query)
        self._hand_over_to: tuple[nn.Module, nn.Module] | None = None  # set by install_fast_kernels

    def _scale_query(self, stacked: torch.Tensor) -> torch.Tensor:
        """The q/k/v weight rows (or biases) with the query's multiplied by the softmax scale:
        folding the scale into the projection saves a pass over the attention scores."""
        scaled = stacked.clone()
        scaled[: self.all_head_size] *= self.scale
        return scaled

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        use_sdpa: bool = True,
        query_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_dropout = self.training and self.dropout_prob > 0
        plain = head_mask is not None or output_attentions or attention_dropout
        dtype = None if plain else _kernel_dtype(hidden_states)
        # Float32 training where PyTorch's kernels are the fast ones: three GEMMs and SDPA train
        # 3 % faster than the fused q/k/v (measured, DeiT-Ti batch 32).
        fused = dtype is not None and not (torch.is_grad_enabled() and not _trains_on_kernel(dtype))
        modules = self._modules
        projections = (modules["query"], modules["key"], modules["value"])
        skippable = fused and not _global_hooks() and all(_skippable(p, _LINEARS) for p in projections)
        params = [_registered(p) for p in projections] if skippable else [None]
        if None in params:
            return super().forward(hidden_states, head_mask, output_attentions, use_sdpa, query_tokens)
        weights = tuple(weight for weight, _ in params)
        biases = None if params[0][1] is None else tuple(bias for _, bias in params)
        if torch.is_grad_enabled():
            # Concatenated on every call (cheap next to the matmuls) so gradients reach q, k, v.
            bias = None if biases is None else self._scale_query(torch.cat(biases))
            qkv = _trainable_linear(hidden_states, dtype, self._scale_query(torch.cat(weights)), bias, self._kernel)
        else:
            qkv = self._kernel(hidden_states, dtype, weights, biases, round_result=False)
        # Attention in the matmul's arithmetic dtype (float32 for bf16 computed in float32: no
        # rounding inside; in inference none before the output projection either).
        arithmetic = self._kernel.arithmetic_dtype(dtype)
        context = _attention(_cast(qkv, arithmetic), self.num_attention_heads, self.attention_head_size, query_tokens)
        if not torch.is_grad_enabled() and _hands_over(self._hand_over_to):
            return context, None
        return _cast(context, dtype), None


class _OptimizedPatchEmbeddings(DeiTPatchEmbeddings):
    """The stride-p, kernel-p convolution as what it is, one matmul over the flattened patches:
    a reshape copy plus a packed GEMM beats the oneDNN convolution about 3x (measured)."""

    def _init_fast(self, bf16_matmul: str) -> None:
        self._kernel = _PackedLinear(bf16_matmul)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = _kernel_dtype(pixel_values)
        conv = self._modules["projection"]
        p = self.patch_size
        # Only the convolution DeiT builds (kernel = stride = patch, no padding) is one GEMM.
        params = None if dtype is None or _global_hooks() or not _skippable(conv, (nn.Conv2d,)) else _registered(conv)
        if (params is None or conv.kernel_size != (p, p) or conv.stride != (p, p) or conv.padding not in ((0, 0), "valid")
                or conv.dilation != (1, 1) or conv.groups != 1):
            return super().forward(pixel_values)
        batch_size, channels, height, width = pixel_values.shape
        rows, cols = height // p, width // p
        # Pixels past the last whole patch are ignored, as by the strided convolution.
        patches = pixel_values[:, :, : rows * p, : cols * p].reshape(batch_size, channels, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch_size, rows * cols, channels * p * p)
        weight, bias = params
        weight = weight.reshape(conv.out_channels, -1)  # (out, C*p*p), the order of a patch row
        if torch.is_grad_enabled():
            if _trains_on_kernel(dtype):
                return _trainable_linear(patches, dtype, weight, bias, self._kernel)
            return torch.nn.functional.linear(patches, weight, bias)  # still a GEMM, not a convolution
        return self._kernel(patches, dtype, (weight,), None if bias is None else (bias,))


def _attention(qkv: torch.Tensor, num_heads: int, head_size: int, query_tokens: int | None = None) -> torch.Tensor:
    """softmax(q k^T) v from (batch, tokens, 3 * hidden) projections with pre-scaled queries,
    for the first ``query_tokens`` queries (all by default), as (batch, queries, hidden).

    Computed in ``qkv``'s dtype, also under autocast. Float32 runs PyTorch's fused SDPA kernel
    on strided views of the projections (5-15 % faster than the chunked computation for
    DeiT-Ti/S/B at 198 tokens on an Intel AVX-512 CPU, and a fused backward). bfloat16, and
    training where oneDNN's float32 kernels are the fast ones (AMD), run
    :func:`_chunked_attention`: about twice as fast as SDPA in bf16 on AMD Zen 4, and what was
    measured training there."""
    if torch.is_autocast_enabled(qkv.device.type):  # it would run float32 q/k/v in bf16
        with torch.autocast(qkv.device.type, enabled=False):
            return _attention(qkv, num_heads, head_size, query_tokens)
    if qkv.dtype != torch.float32 or (torch.is_grad_enabled() and onednn_fp32_is_fast()):
        return _chunked_attention(qkv, num_heads, head_size, query_tokens)
    batch_size, seq_len, _ = qkv.shape
    query, key, value = qkv.view(batch_size, seq_len, 3, num_heads, head_size).permute(2, 0, 3, 1, 4).unbind(0)
    if query_tokens is not None:
        query = query[:, :, :query_tokens]
    context = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=1.0)
    return context.transpose(1, 2).reshape(batch_size, query.shape[2], num_heads * head_size)


def _chunked_attention(qkv: torch.Tensor, num_heads: int, head_size: int, query_tokens: int | None = None) -> torch.Tensor:
    """softmax(q k^T) v from (batch, tokens, 3 * hidden) projections with pre-scaled queries,
    for the first ``query_tokens`` queries (all by default), a few samples at a time."""
    batch_size, seq_len, _ = qkv.shape
    out_len = seq_len if query_tokens is None else query_tokens
    qkv = qkv.view(batch_size, seq_len, 3, num_heads, head_size)
    context = qkv.new_empty(batch_size, out_len, num_heads, head_size)
    for start in range(0, batch_size, _SAMPLES_PER_CHUNK):
        chunk = slice(start, start + _SAMPLES_PER_CHUNK)
        # One copy into (3, samples * heads, tokens, head_size): contiguous per-head matrices.
        query, key, value = qkv[chunk].permute(2, 0, 3, 1, 4).reshape(3, -1, seq_len, head_size).unbind(0)
        probs = torch.bmm(query[:, :out_len], key.transpose(1, 2)).softmax(-1)
        context[chunk] = torch.bmm(probs, value).view(-1, num_heads, out_len, head_size).transpose(1, 2)
    return context.view(batch_size, out_len, num_heads * head_size)


class _OptimizedLayer(DeiTLayer):
    """A block whose inference calls its parts' ``forward`` directly, and adds the residual in
    the epilogue of the Linear before it (float32): at batch 1 a block's matmuls take some
    50-200 us each and ``nn.Module.__call__``, the wrapper modules (attention, outputs,
    dropouts, drop path) and the separate additions cost a few us each. Measured +3.5 %
    images/s for DeiT-Ti at batch 1 (30 interleaved rounds), no change at DeiT-S batch 16.
    Taken only in eval mode without gradients, head mask or attention maps, outside tracing,
    and where it skips nothing a user set up (:meth:`_direct_parts`); otherwise the block runs
    through its modules."""

    def _init_fast(self, bf16_matmul: str) -> None:
        pass  # no kernel of its own: its parts have theirs

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        use_sdpa: bool = True,
        query_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = None
        if (head_mask is None and not output_attentions and not self.training and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):  # traced graphs keep every module (export's module stack)
            parts = self._direct_parts()
        if parts is None:
            return super().forward(hidden_states, head_mask, output_attentions, use_sdpa, query_tokens)
        norm_before, self_attention, attention_dense, norm_after, intermediate, output_dense = parts
        context, _ = self_attention.forward(norm_before.forward(hidden_states), None, False, use_sdpa, query_tokens)
        if query_tokens is not None:
            hidden_states = hidden_states[:, :query_tokens]
        hidden_states = attention_dense.add_to(hidden_states, context)
        return output_dense.add_to(hidden_states, intermediate.forward(norm_after.forward(hidden_states))), None

    def _direct_parts(self) -> tuple[nn.Module, ...] | None:
        """(layernorm_before, self-attention, its output Linear, layernorm_after, intermediate,
        output Linear) when calling them directly skips nothing: the wrappers are this block's
        own classes, and no part or skipped module has a forward hook (nor is there a global
        one), a ``forward`` of its own or training mode (dropout switched on for Monte Carlo
        dropout). Read through ``_modules`` (see :func:`_registered`)."""
        if _global_hooks():
            return None
        modules = self._modules
        attention, mlp_output = modules["attention"], modules["output"]
        if type(attention) is not DeiTAttention or type(mlp_output) is not DeiTOutput:
            return None  # (checked first: the lookups below assume their parts)
        attention_output = attention._modules["output"]
        if type(attention_output) is not DeiTSelfOutput:
            return None
        norm_before, self_attention, norm_after, intermediate = (modules["layernorm_before"], attention._modules["attention"],
                                                                 modules["layernorm_after"], modules["intermediate"])
        attention_dense, output_dense = attention_output._modules["dense"], mlp_output._modules["dense"]
        # Called through their forward: only their hooks would be missed.
        for module in norm_before, self_attention, norm_after, intermediate:
            if module.training or _hooked(module):
                return None
        # Skipped: the output Linears' forward (add_to computes it), the wrappers, the dropouts
        # and the drop path.
        skipped = ((attention_dense, (_OptimizedLinear,)), (output_dense, (_OptimizedLinear,)), (attention, (DeiTAttention,)),
                   (attention_output, (DeiTSelfOutput,)), (mlp_output, (DeiTOutput,)),
                   (attention_output._modules["dropout"], (nn.Dropout,)), (mlp_output._modules["dropout"], (nn.Dropout,)),
                   (modules["drop_path"], (DropPath, nn.Identity)))
        for module, expected in skipped:
            if module.training or not _skippable(module, expected):
                return None
        return norm_before, self_attention, attention_dense, norm_after, intermediate, output_dense


class _OptimizedEncoder(DeiTEncoder):
    """An encoder that, on a batch large enough, runs its layers on one part of the batch per
    core, each part on a single-threaded worker (:mod:`deit.streams`), in inference and in
    training (forward and backward). DeiT-S inference at batch 16, float32, +2-3 %; a DeiT-Ti
    training step at batch 32 +4.5 %. Taken only without head mask, attention maps, hidden
    states or gradient checkpointing, and where splitting the batch changes nothing a user can
    see (:meth:`_unobserved`); otherwise, and for small batches, the layers run as usual."""

    _streams: int | str = "auto"

    def _init_fast(self, bf16_matmul: str) -> None:
        pass  # no kernel of its own: its layers have theirs

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        use_sdpa: bool = True,
        last_layer_tokens: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        streams = 1
        # (Tracing first: under export the batch size is symbolic, and comparing it would fix it.)
        if (_kernel_dtype(hidden_states) is not None and head_mask is None and not output_attentions and not output_hidden_states
                and not (self.gradient_checkpointing and self.training)):
            streams = streams_for(hidden_states.shape[0], self._streams)
        if streams == 1 or not self._unobserved():
            return super().forward(hidden_states, head_mask, output_attentions, output_hidden_states, use_sdpa, last_layer_tokens)

        def layers(part: torch.Tensor) -> torch.Tensor:
            return DeiTEncoder.forward(self, part, None, False, False, use_sdpa, last_layer_tokens)[0]

        if torch.is_grad_enabled():
            return train_in_streams(layers, hidden_states, streams, list(self.parameters())), None, None
        return run_in_streams(layers, hidden_states, streams), None, None

    def _unobserved(self) -> bool:
        """Whether running the layers once per part of the batch is invisible to the user: no
        hooks (they would fire once per part, with part of the batch), no dropout or drop path
        drawing random numbers (the threads would draw them in no fixed order), no ``forward``
        replaced on an instance and no module class other than ours and PyTorch's (either may
        keep state across calls), and no torch function or dispatch mode (profilers, FLOP
        counters: they see only the calling thread)."""
        if _global_hooks() or torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack():
            return False
        for module in self.modules():
            if (_hooked(module) or "forward" in module.__dict__ or not type(module).__module__.startswith(("deit.", "torch.nn."))
                    or module.training and _draws_random_numbers(module)):
                return False
        return True


def _draws_random_numbers(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in training mode."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, DropPath):
        return module.drop_prob > 0
    if isinstance(module, DeiTSelfAttention):
        return module.dropout_prob > 0
    return False


# What :func:`optimize` switches, in the order the benchmarks' ablation adds them.
PARTS = ("linear", "mlp", "attention", "patches", "blocks", "streams")
_REPLACEMENTS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "linear": (nn.Linear, _OptimizedLinear),
    "mlp": (DeiTIntermediate, _OptimizedIntermediate),
    "attention": (DeiTSelfAttention, _OptimizedSelfAttention),
    "patches": (DeiTPatchEmbeddings, _OptimizedPatchEmbeddings),
    "blocks": (DeiTLayer, _OptimizedLayer),
    "streams": (DeiTEncoder, _OptimizedEncoder),
}


def install_fast_kernels(model: nn.Module, parts: tuple[str, ...] = PARTS, bf16_matmul: str = "auto",
                         streams: int | str = "auto") -> None:
    """Switch the modules of the kinds in ``parts`` to the fast kernels (see :data:`PARTS`)."""
    if bf16_matmul not in BF16_MATMUL_MODES:
        raise ValueError(f"bf16_matmul must be one of {', '.join(BF16_MATMUL_MODES)}, got {bf16_matmul!r}")
    if streams != "auto" and not (isinstance(streams, int) and not isinstance(streams, bool) and streams >= 1):
        raise ValueError(f"streams must be 'auto' or a whole number >= 1, got {streams!r}")
    for module in model.modules():
        for part in parts:
            plain, fast = _REPLACEMENTS[part]
            if type(module) is plain and (part != "mlp" or module.hidden_act in _FUSED_ACTIVATIONS):
                module.__class__ = fast
            if type(module) is fast:  # also already optimized ones: new settings, caches emptied
                module._init_fast(bf16_matmul)
        if type(module) is _OptimizedEncoder:
            module._streams = streams
    # In bf16 inference with float32 arithmetic, the attention's context and the MLP's hidden
    # activation go to the next Linear in float32, when that Linear is ours and takes them as
    # they are: a bf16 model then rounds to bf16 only what enters the residual stream (saves
    # four of the six bf16<->float32 conversions of a block, the MLP's the largest). The Linear
    # is recorded here and checked on every call: one swapped in later gets bf16 as usual.
    for module in model.modules():
        if isinstance(module, DeiTAttention) and isinstance(module.attention, _OptimizedSelfAttention):
            dense = module.output.dense
            module.attention._hand_over_to = (module.output, dense) if type(dense) is _OptimizedLinear else None
        if isinstance(module, DeiTLayer) and isinstance(module.intermediate, _OptimizedIntermediate):
            dense = module.output.dense
            module.intermediate._hand_over_to = (module.output, dense) if type(dense) is _OptimizedLinear else None


def optimize(model: DeiTPreTrainedModel, dtype: torch.dtype | str | None = None, compile: bool = False,
             bf16_matmul: str = "auto", streams: int | str = "auto") -> DeiTPreTrainedModel:
    """Switch ``model`` to the fast CPU kernels (see the module docstring), in place; returns it.

    ``dtype``: cast the weights first (``torch.bfloat16`` / ``"bf16"`` halves the weights' memory;
    it is also the fastest inference setting on CPUs whose bf16 matmul beats float32, AMX or AMD
    Zen 4, and runs at about float32 speed elsewhere, its matmuls then in float32 arithmetic; for
    training keep float32 weights and use autocast). Works in eval and in training mode; the mode
    is left as it is. On devices other than the CPU, or where PyTorch lacks the oneDNN kernels, the
    modules are left unchanged. ``compile=True`` also compiles the model with ``torch.compile``
    (inductor; the first call takes a while). ``bf16_matmul``: how bfloat16 matmuls run (in
    inference, and the Linear layers under bf16 autocast in training), ``"bf16"`` (oneDNN's bf16
    kernel, where the CPU has one: :func:`bf16_kernels_available`; elsewhere every mode computes as
    ``"fp32"``), ``"fp32"`` (float32 arithmetic on the exact bf16 operands, results rounded to bf16
    where they enter the residual stream) or ``"auto"``, the faster of the two on this CPU
    (:func:`bf16_matmul_is_fast`). ``streams``: in inference and training, run the encoder on this
    many parts of the batch at once, each on one single-threaded worker (:mod:`deit.streams`);
    ``"auto"`` is one part per intra-op thread for batches of at least 4 samples per thread
    (measured on a 2-core CPU), ``1`` never splits. Called again on an optimized model, it applies
    the new settings and derives the cached (packed, cast) weights afresh.
    """
    if dtype is not None:
        model.to(to_dtype(dtype))
    if fast_kernels_available() and model.device.type == "cpu":
        install_fast_kernels(model, bf16_matmul=bf16_matmul, streams=streams)
    if compile:
        model.compile()
    return model
