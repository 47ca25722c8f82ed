"""Fast CPU inference: :func:`optimize` builds a separate, frozen copy of a model and picks its
engine by measurement: :class:`deit.inference_model.InferenceModel` (PyTorch kernels) or
:class:`deit.onnx_engine.OnnxRuntimeModel` (the same graph in an ONNX Runtime session; int8).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import onnx_engine
from .dtypes import to_dtype
from .inference_model import InferenceModel
from .modeling import DeiTForImageClassification, DeiTForImageClassificationWithTeacher, DeiTPreTrainedModel
from .probes import fastest

__all__ = ["optimize", "InferenceModel", "BACKENDS"]

# The engines behind optimize (see its docstring), and the dtype names that ask for int8.
BACKENDS = ("auto", "torch", "onnxruntime")
INT8_NAMES = ("int8", torch.int8, torch.qint8)
# (engines, model shape, threads) -> the engine measured fastest in this process.
_ENGINE_CHOICES: dict[tuple, str] = {}

def _fastest(engines: dict[str, nn.Module], config: Any) -> str:
    """The name of the engine that runs a one-image batch fastest here (measured once per process,
    model shape and thread count: about ten calls of each)."""
    key = (tuple(engines), config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.num_attention_heads,
           config.image_size, config.patch_size, torch.get_num_threads())
    if key not in _ENGINE_CHOICES:
        pixels = torch.randn(1, config.num_channels, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))

        def call(engine: nn.Module) -> Callable[[], object]:
            return lambda: engine(pixels)

        with torch.inference_mode():
            _ENGINE_CHOICES[key] = fastest({name: call(engine) for name, engine in engines.items()})
    return _ENGINE_CHOICES[key]


def optimize(model: DeiTPreTrainedModel, dtype: torch.dtype | str | None = None, compile: bool = False,
             bf16_matmul: str = "auto", backend: str = "auto", linear_kernel: str = "auto",
             cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """A frozen, fast CPU inference copy of ``model`` (see the module docstring); ``model`` itself
    is not modified.

    ``dtype``: the copy's precision (default: the model's). ``torch.bfloat16`` / ``"bf16"`` halves
    the weights' memory and is the fastest setting on CPUs whose bf16 matmul beats float32 (AMX,
    AMD Zen 4/5), about float32 speed elsewhere. ``"int8"``: int8 weights with dynamically
    quantized activations, run by ONNX Runtime (:mod:`deit.onnx_engine` names the layers kept in
    float32); classifiers only, ``pip install 'deit[onnx]'``.

    ``backend``: the engine of a float32 classifier: ``"torch"`` (:class:`InferenceModel`, this
    module's PyTorch kernels), ``"onnxruntime"`` (:class:`deit.onnx_engine.OnnxRuntimeModel`: the
    same graph, with the same savings, in an ONNX Runtime session), or ``"auto"``: where ONNX
    Runtime is installed, both are built and the one faster on a one-image batch here is
    returned (measured once per process and model shape, a few seconds with the export); bfloat16
    and bare bodies always run on PyTorch. ``cache_dir``: keep the ONNX files there and reuse them
    for the same weights.

    ``linear_kernel``: the PyTorch engine's matmuls, ``"onednn"`` (prepacked weights, fused
    epilogues), ``"default"`` (``F.linear``: MKL in float32) or ``"auto"``, the faster here
    (:func:`deit.probes.onednn_fp32_wins`). ``bf16_matmul``: how bfloat16 matmuls run, ``"bf16"``
    (oneDNN's bf16 kernel, where the CPU has one), ``"fp32"`` (float32 arithmetic on the exact bf16
    operands) or ``"auto"``, the faster here (:func:`deit.probes.bf16_matmul_is_fast`).
    ``compile=True`` wraps the PyTorch engine in ``torch.compile`` (the first call takes a while).

    On another device, or in float16, this returns ``model`` itself, cast to ``dtype`` when one is given.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if dtype in INT8_NAMES:
        if backend == "torch" or model.device.type != "cpu":
            raise ValueError("int8 inference runs on ONNX Runtime on the CPU: use backend='onnxruntime' or 'auto' on a CPU model")
        return onnx_engine.OnnxRuntimeModel(model, "int8", cache_dir=cache_dir)
    target = to_dtype(dtype) if dtype is not None else model.dtype
    if model.device.type != "cpu" or target not in (torch.float32, torch.bfloat16):
        if backend == "onnxruntime":
            raise ValueError(f"the ONNX Runtime engine runs float32 or int8 CPU models, not {target} on {model.device}")
        return model.to(target) if dtype is not None else model
    if backend == "onnxruntime" or (backend == "auto" and not compile and target == torch.float32 and _onnx_serves(model)):
        if backend == "onnxruntime":
            if target != torch.float32 or compile:
                raise ValueError("the ONNX Runtime engine runs float32 (or int8) without torch.compile: use backend='torch'")
            return onnx_engine.OnnxRuntimeModel(model, "fp32", cache_dir=cache_dir)
        engines = {"torch": InferenceModel(model, target, bf16_matmul, linear_kernel),
                   "onnxruntime": onnx_engine.OnnxRuntimeModel(model, "fp32", cache_dir=cache_dir)}
        return engines[_fastest(engines, model.config)]
    inference = InferenceModel(model, target, bf16_matmul, linear_kernel)
    return torch.compile(inference) if compile else inference


def _onnx_serves(model: DeiTPreTrainedModel) -> bool:
    """Whether the ONNX Runtime engine is installed and takes this model (a classifier)."""
    return isinstance(model, (DeiTForImageClassification, DeiTForImageClassificationWithTeacher)) and onnx_engine.onnxruntime_available()
