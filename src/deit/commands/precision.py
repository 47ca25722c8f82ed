"""The precision options ``deit predict`` and ``deit eval`` share: ``--dtype`` (int8 included) and
``--backend``, and the dtype a model is loaded and fed in for them."""

from __future__ import annotations

import argparse

import torch

from ..dtypes import DTYPES, PRECISIONS
from ..optimize import BACKENDS

INT8 = "int8"


def add_precision_options(parser: argparse.ArgumentParser, dtype_help: str) -> None:
    """``--dtype`` (``dtype_help`` says what the float ones do here) and ``--backend``."""
    parser.add_argument("--dtype", choices=PRECISIONS + (INT8,), default="fp32",
                        help=f"{dtype_help}; int8: int8 weights and dynamically quantized activations on ONNX Runtime "
                             "(CPU, pip install 'deit[onnx]')")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="CPU engine of a float32 or int8 model: auto (the faster here: measured the first time for this "
                             "machine and model shape, then kept in $DEIT_CACHE_DIR or ~/.cache/deit with the ONNX Runtime "
                             "engine's graph files), torch or onnxruntime")


def is_int8(args: argparse.Namespace) -> bool:
    return args.dtype == INT8


def model_dtype(args: argparse.Namespace) -> torch.dtype:
    """The dtype the model is loaded in and fed: float32 for int8 (deit.optimize quantizes it)."""
    return torch.float32 if is_int8(args) else DTYPES[args.dtype]
