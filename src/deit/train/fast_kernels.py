"""Fast CPU training: every ``nn.Linear`` on oneDNN in forward and backward (:func:`use_fast_kernels`).

On the CPU PyTorch's float32 matrix products go through MKL, which on some AMD processors runs
about half as fast as oneDNN, and on others (Zen 3) faster (:func:`training_kernels_win` measures it). :class:`OneDNNLinear`
is an ``nn.Linear`` (same parameters, same state-dict names) whose forward matmul and both
backward ones (input and weight gradients) are oneDNN calls, through a small autograd function:

* float32: oneDNN's float32 kernel;
* under CPU bfloat16 autocast: the operands are cast to bf16 as autocast casts them for
  ``F.linear`` (the casts are recorded, so gradients reach the float32 weights), then multiplied
  by oneDNN's bf16 kernel where it is the faster one here (:func:`deit.probes.bf16_matmul_is_fast`),
  else in float32 arithmetic on the widened bf16 operands (exactly: every product is the one the
  bf16 kernel computes, the sum is accumulated in float32 as there), the results rounded to bf16.
  On CPUs without any bf16 matmul instruction (:func:`deit.probes.bf16_kernels_available` is
  false) bf16 matmuls always run in that float32 arithmetic;
* anything else (other devices, float16, while ``torch.compile`` / ``torch.export`` trace the
  model, under ``torch.func`` transforms) runs plain ``F.linear``: traced graphs hold ordinary ops.

Outputs and gradients match ``nn.Linear``'s up to floating-point rounding (tests/train/test_fast_kernels.py
states the bounds). Nothing happens at import and nothing global is changed: a model uses the
kernels once :func:`use_fast_kernels` has replaced its Linear modules. ``deit train`` does that
for the student when :func:`fast_kernels_pay` says so (``--fast-kernels auto|on|off``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..probes import best_seconds, bf16_kernels_available, bf16_matmul_is_fast, fast_kernels_available

__all__ = ["OneDNNLinear", "use_fast_kernels", "fast_kernels_pay", "training_kernels_win", "FAST_KERNEL_SETTINGS"]

# ``--fast-kernels``: "auto" (where they pay, :func:`fast_kernels_pay`), "on", "off".
FAST_KERNEL_SETTINGS = ("auto", "on", "off")
# The dtypes the kernels compute in (bfloat16 possibly in float32 arithmetic, see the docstring).
_FAST_DTYPES = frozenset({torch.float32, torch.bfloat16})


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in one oneDNN call (``weight`` a plain (out, in) matrix, any strides)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the matmuls of a Linear computing in ``dtype`` run in: bfloat16 only where oneDNN
    multiplies bf16 faster than float32 on this CPU, else float32 (on the exact bf16 operands)."""
    if dtype != torch.bfloat16:
        return dtype
    if not bf16_kernels_available() or not bf16_matmul_is_fast():
        return torch.float32
    return dtype


def _kernel_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a Linear computes ``x`` in (autocast's when CPU autocast is on, else ``x``'s) when
    the oneDNN kernels can run it: a CPU tensor, outside tracing and functorch transforms, in
    float32 or bfloat16; else None (plain ``F.linear``)."""
    if not x.is_cpu or torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype if dtype in _FAST_DTYPES else None


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
        # contiguous: the gradient of a sum arrives expanded (stride 0), on which oneDNN falls back to
        # a reference kernel some 150x slower (60 s for one DeiT-S MLP layer).
        grad_2d = grad_output.contiguous().view(-1, grad_output.shape[-1])
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


def _trainable_linear(x: torch.Tensor, dtype: torch.dtype, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The Linear computed in ``dtype`` on oneDNN, differentiable in ``x``, ``weight`` and ``bias``."""
    if dtype != weight.dtype or dtype != x.dtype:
        # What autocast does for F.linear; the casts are recorded, so gradients reach float32.
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _OneDNNLinearFunction.apply(x, weight, bias, arithmetic_dtype(dtype))


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose forward and backward matmuls run on oneDNN (CPU, float32 or bf16
    autocast; see the module docstring); elsewhere, and while tracing, plain ``F.linear``.
    Same parameters and state-dict names as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _kernel_dtype(x)
        weight, bias = self.weight, self.bias
        if dtype is None or not weight.is_cpu or weight.dtype not in _FAST_DTYPES:
            return F.linear(x, weight, bias)
        return _trainable_linear(x, dtype, weight, bias)

    @classmethod
    def sharing(cls, linear: nn.Linear) -> "OneDNNLinear":
        """A OneDNNLinear standing for ``linear``: its own Parameter objects (not copies), its mode,
        attributes and hooks (the same hook dicts, so existing handles still remove them)."""
        fast = cls.__new__(cls)
        fast.__dict__.update(linear.__dict__)
        # Own registries (holding the same tensors): registering on one module leaves the other be.
        for registry in ("_parameters", "_buffers", "_modules"):
            setattr(fast, registry, type(getattr(linear, registry))(getattr(linear, registry)))
        return fast


def use_fast_kernels(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> int:
    """Replace every ``nn.Linear`` in ``model`` (exactly that class: subclasses and adapters are
    left as they are) by a :class:`OneDNNLinear` that holds the same Parameter objects; returns
    how many were replaced. In place (``model`` itself, having no parent, is not replaced).

    An optimizer built before or after, ``state_dict`` / ``load_state_dict`` (the same keys), EMA
    copies and DDP all see the same parameters; hooks and attributes set on a replaced Linear
    carry over. Call it before wrapping the model (DDP, ``torch.compile``): the wrappers hold the
    modules they found.
    ``dtype``: the dtype the model will train in, float32 or ``torch.bfloat16`` (bf16 autocast
    over float32 weights); for bf16 the one-off measurement of which bf16 arithmetic is faster
    here (:func:`deit.probes.bf16_matmul_is_fast`) runs now, not in the first training step. The
    kernels themselves follow each call's dtype and device (see :class:`OneDNNLinear`).
    """
    if dtype not in _FAST_DTYPES:
        raise ValueError(f"the fast kernels compute in float32 or bfloat16, not {dtype}")
    if dtype == torch.bfloat16:
        arithmetic_dtype(dtype)
    replacements: dict[int, OneDNNLinear] = {}  # a Linear registered twice (shared) stays one module
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is nn.Linear:
                if id(child) not in replacements:
                    replacements[id(child)] = OneDNNLinear.sharing(child)
                parent._modules[name] = replacements[id(child)]
    return len(replacements)


def fast_kernels_pay(setting: str, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether a run training in ``dtype`` (float32, or ``torch.bfloat16`` for bf16 autocast) on
    ``device`` should :func:`use_fast_kernels`, for ``setting`` (``--fast-kernels``):

    * ``"on"``: yes; a ValueError where they cannot run (not the CPU, no oneDNN kernels in this
      PyTorch build, float16);
    * ``"off"``: never;
    * ``"auto"``: on the CPU, where PyTorch has the kernels and they train faster here than
      PyTorch's own: :func:`training_kernels_win` times a Linear layer's forward and backward
      both ways, in ``dtype`` (measured once per process). Where oneDNN's bf16 matmul is fast,
      autocast already runs it, so bf16 autocast turns them on only where that kernel is missing
      or slow (:func:`deit.probes.bf16_matmul_is_fast` false) and the measurement agrees.
    """
    if setting not in FAST_KERNEL_SETTINGS:
        raise ValueError(f"fast_kernels must be one of {', '.join(FAST_KERNEL_SETTINGS)}, got {setting!r}")
    if setting == "off":
        return False
    device = torch.device(device)
    if setting == "on":
        if device.type != "cpu":
            raise ValueError(f"--fast-kernels on: the fast kernels are CPU kernels, this run trains on {device}")
        if not fast_kernels_available():
            raise ValueError("--fast-kernels on: this PyTorch build has no oneDNN matmul kernel "
                             "(torch.ops.mkldnn._linear_pointwise); use --fast-kernels auto or off")
        if dtype not in _FAST_DTYPES:
            raise ValueError(f"--fast-kernels on: the fast kernels compute in float32 or bfloat16, not {dtype} (--amp fp16)")
        return True
    if device.type != "cpu" or not fast_kernels_available() or dtype not in _FAST_DTYPES:
        return False
    if dtype == torch.bfloat16 and bf16_matmul_is_fast():
        return False
    return training_kernels_win(dtype)


# How much faster the fast kernels' Linear step must be for "auto": a training step is more than
# its Linear layers, so a small edge in them is not worth a different code path.
_TRAINING_MARGIN = 1.05


@functools.cache
def training_kernels_win(dtype: torch.dtype) -> bool:
    """Whether a :class:`OneDNNLinear` trains 5 % faster than ``nn.Linear`` here in ``dtype``
    (float32, or ``torch.bfloat16`` for bf16 autocast): forward and backward of DeiT-S's first
    MLP Linear on 1024 tokens, each way, best of seven interleaved rounds (about half a second).
    It replaces a float32 matmul-only probe whose 1.15-1.4x matmul edge on some CPUs came out as
    a 3 % slower to 8 % faster training step, and as 18 % slower on an AMD Zen 3 (BENCHMARKS.md).
    Drawn from its own generator: it may run mid-training and must not move the global random state."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 384, generator=generator, requires_grad=True)
    plain = nn.utils.skip_init(nn.Linear, 384, 1536)  # (its initialisation would draw from the global generator)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(1536, 384, generator=generator) * 0.05)
        plain.bias.zero_()
    fast = OneDNNLinear.sharing(plain)
    autocast = torch.autocast("cpu", torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()

    def step(layer: nn.Module) -> Any:
        def run() -> None:
            with autocast:
                out = layer(x)
            out.float().sum().backward()

        return run

    seconds = best_seconds({"fast": step(fast), "plain": step(plain)})
    return seconds["fast"] * _TRAINING_MARGIN <= seconds["plain"]
