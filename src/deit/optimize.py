"""Fast CPU inference: :func:`optimize` builds a separate, frozen copy of a model and picks its
engine by measurement: :class:`deit.inference_model.InferenceModel` (PyTorch kernels) or
:class:`deit.onnx_engine.OnnxRuntimeModel` (the same graph in an ONNX Runtime session; int8).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import onnx_engine
from .dtypes import to_dtype
from .inference_model import InferenceModel
from .atomic import atomic_write_text
from .model_rules import model_kind
from .modeling import DeiTPreTrainedModel
from .probes import cpu_description, fastest

__all__ = ["optimize", "InferenceModel", "BACKENDS", "default_cache_dir"]

# The engines behind optimize (see its docstring), and the dtype names that ask for int8.
BACKENDS = ("auto", "torch", "onnxruntime")
INT8_NAMES = ("int8", torch.int8, torch.qint8)
# The file (in the cache folder) that keeps the engine measured fastest for each machine and model
# shape, as JSON {key: engine}; and those choices read or made in this process.
CHOICES_FILE = "engine-choices.json"
_ENGINE_CHOICES: dict[str, str] = {}


def default_cache_dir() -> Path:
    """Where :func:`optimize` keeps its engine choices when given no ``cache_dir``:
    ``$DEIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/deit``, else ``~/.cache/deit``."""
    if os.environ.get("DEIT_CACHE_DIR"):
        return Path(os.environ["DEIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deit"


def _choice_key(engines: tuple[str, ...], config: Any) -> str:
    """What the engine choice depends on: the CPU, the threads, the engines' versions and the model's shape."""
    import onnxruntime

    shape = (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.num_attention_heads,
             config.image_size, config.patch_size, config.num_channels, config.num_labels)
    return (f"{'/'.join(engines)}|{cpu_description()}|{torch.get_num_threads()} threads|torch {torch.__version__}|"
            f"onnxruntime {onnxruntime.__version__}|shape {','.join(map(str, shape))}")


def _read_choices(path: Path) -> dict[str, str]:
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measured again and rewritten
    return choices if isinstance(choices, dict) else {}


def _choose_engine(model: DeiTPreTrainedModel, builders: dict[str, Callable[[], nn.Module]], folder: Path) -> nn.Module:
    """The engine that runs a one-image batch of ``model`` fastest here (about ten calls of each,
    after building them all), measured once per machine, thread count, versions and model shape,
    and kept in ``folder`` (:data:`CHOICES_FILE`): a later process builds only the chosen one."""
    key = _choice_key(tuple(builders), model.config)
    path = folder / CHOICES_FILE
    if key not in _ENGINE_CHOICES and (kept := _read_choices(path).get(key)) in builders:
        _ENGINE_CHOICES[key] = kept
    if key in _ENGINE_CHOICES:
        return builders[_ENGINE_CHOICES[key]]()
    engines = {name: build() for name, build in builders.items()}
    config = model.config
    pixels = torch.randn(1, config.num_channels, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))

    def call(engine: nn.Module) -> Callable[[], object]:
        return lambda: engine(pixels)

    with torch.inference_mode():
        _ENGINE_CHOICES[key] = fastest({name: call(engine) for name, engine in engines.items()})
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**_read_choices(path), key: _ENGINE_CHOICES[key]}, indent=1))
    except OSError:
        pass  # a read-only cache: the choice still holds for this process
    return engines[_ENGINE_CHOICES[key]]


def optimize(model: DeiTPreTrainedModel, dtype: torch.dtype | str | None = None, bf16_matmul: str = "auto",
             backend: str = "auto", linear_kernel: str = "auto", cache_dir: str | os.PathLike | None = None) -> nn.Module:
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
    Runtime is installed, the one faster on a one-image batch here. The first time for a CPU,
    thread count, library versions and model shape, both are built and timed (the export and
    the timing take a few seconds); the choice is kept in ``cache_dir`` (default
    :func:`default_cache_dir`), so later processes build only the chosen engine. bfloat16 and
    bare bodies always run on PyTorch. ``cache_dir`` also keeps the ONNX files there and reuses
    them for the same weights (without it they are exported again by each process).

    ``linear_kernel``: the PyTorch engine's matmuls, ``"onednn"`` (prepacked weights, fused
    epilogues), ``"default"`` (``F.linear``: MKL in float32) or ``"auto"``, the faster here
    (:func:`deit.probes.onednn_fp32_wins`). ``bf16_matmul``: how bfloat16 matmuls run, ``"bf16"``
    (oneDNN's bf16 kernel, where the CPU has one), ``"fp32"`` (float32 arithmetic on the exact bf16
    operands) or ``"auto"``, the faster here (:func:`deit.probes.bf16_matmul_is_fast`).

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
    if backend == "onnxruntime":
        if target != torch.float32:
            raise ValueError("the ONNX Runtime engine runs float32 (or int8): use backend='torch' for bfloat16")
        return onnx_engine.OnnxRuntimeModel(model, "fp32", cache_dir=cache_dir)
    if backend == "auto" and target == torch.float32 and _onnx_serves(model):
        builders = {"torch": lambda: InferenceModel(model, target, bf16_matmul, linear_kernel),
                    "onnxruntime": lambda: onnx_engine.OnnxRuntimeModel(model, "fp32", cache_dir=cache_dir)}
        return _choose_engine(model, builders, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    return InferenceModel(model, target, bf16_matmul, linear_kernel)


def _onnx_serves(model: DeiTPreTrainedModel) -> bool:
    """Whether the ONNX Runtime engine is installed and takes this model (a classifier)."""
    return bool(model_kind(model).heads) and onnx_engine.onnxruntime_available()
