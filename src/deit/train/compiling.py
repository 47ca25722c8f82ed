"""``--compile``: ``torch.compile`` of the student and of an online teacher, or one clear error.

Compilation is lazy: ``torch.compile`` returns at once and the graph is built on the first
batch. What can be known before training is checked here (the backend exists, the platform runs
TorchDynamo, Inductor on the CPU has its C++ compiler), so that a run does not load its data and
teacher only to fail on its first step; what fails on the first step is said as plainly by
:func:`compile_failure_message`.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from ..errors import DeitError


class CompileUnavailableError(DeitError, RuntimeError):
    """``--compile`` was asked for where ``torch.compile`` cannot compile."""


_ADVICE = "train without --compile (eager mode trains the same model)"


def _cpp_compiler() -> str | None:
    """The C++ compiler Inductor calls for CPU kernels, if one is on the PATH."""
    from torch._inductor import config as inductor_config

    configured = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
    for name in (configured, "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def check_compile(backend: str, device: torch.device) -> None:
    """Raise :class:`CompileUnavailableError` naming why ``backend`` cannot compile on ``device``."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise CompileUnavailableError(f"--compile: torch.compile does not run on this platform (PyTorch {torch.__version__}); {_ADVICE}")
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        usual = [name for name in ("inductor", "aot_eager", "cudagraphs") if name in known]
        raise CompileUnavailableError(f"--compile {backend}: no such torch.compile backend (e.g. {', '.join(usual)})")
    if backend == "inductor" and device.type == "cpu" and _cpp_compiler() is None:
        raise CompileUnavailableError(
            f"--compile inductor on the CPU needs a C++ compiler (g++ or clang++ on the PATH) and none was found; "
            f"install one, use --compile aot_eager (graph capture without generated kernels), or {_ADVICE}"
        )


def compile_module(module: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(module)``: the returned wrapper shares the module's parameters."""
    return torch.compile(module, backend=backend)


def compile_failure_message(backend: str, error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"--compile {backend}: torch.compile failed on the first batch ({type(error).__name__}: {first_line}); {_ADVICE}"


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from compiling (not from the model or the data)."""
    from torch._dynamo import exc

    return isinstance(error, (exc.BackendCompilerFailed, exc.Unsupported, exc.InternalTorchDynamoError))
