"""``deit export MODEL --onnx OUT.onnx [--pt2 OUT.pt2]``: the model as a graph with a dynamic batch axis
named ``batch``, every head as a named output, and (ONNX) the class names and preprocessing as
metadata."""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys

# Batch sizes the check runs: 1, and one the export never saw (it traces a batch of 2).
CHECK_BATCH_SIZES = (1, 5)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX and/or a torch.export program")
    p.add_argument("model", metavar="MODEL", help="checkpoint folder, weights file or Hub name")
    p.add_argument("--onnx", metavar="OUT.onnx",
                   help="write one self-contained ONNX file here: input pixel_values (batch x channels x size x size), an output per "
                        "head (logits; a distilled model also cls_logits and distillation_logits), and metadata entries id2label, "
                        "image_size, image_mean, image_std, resize, preprocessor_config (onnxruntime: "
                        "session.get_modelmeta().custom_metadata_map)")
    p.add_argument("--pt2", metavar="OUT.pt2", help="write a torch.export program here (torch.export.load reads it)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="skip running the ONNX file with onnxruntime against PyTorch")
    p.add_argument("--atol", type=float, default=1e-4, help="largest difference from PyTorch, on any output, that the check accepts")
    p.add_argument("--int8", action="store_true",
                   help="with --onnx: int8 weights (per channel) and dynamically quantized activations, as deit.optimize(dtype='int8') "
                        "runs them (the patch embedding, the heads and attention's products stay float32); the check then reports "
                        "the differences from PyTorch's float32 without applying --atol")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..auto import AutoModelAsSaved
    from ..export import compare_onnx, export_onnx, export_program, onnx_metadata
    from ..model_rules import exported_names
    from ..atomic import atomic_write_bytes
    from ..labels import class_names
    from .convert import processor_for

    if not args.onnx and not args.pt2:
        raise ValueError("nothing to do: give --onnx OUT.onnx and/or --pt2 OUT.pt2")
    if args.int8 and not args.onnx:
        raise ValueError("--int8 quantizes the ONNX file: give --onnx OUT.onnx")
    if args.int8 and importlib.util.find_spec("onnxruntime") is None:
        raise ValueError("--int8 quantizes with onnxruntime: pip install 'deit[onnx]'")
    if args.onnx and (importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None):
        raise ValueError("ONNX export needs the onnx and onnxscript packages: pip install 'deit[onnx]'")
    model = AutoModelAsSaved.from_pretrained(args.model, torch_dtype="float32")
    name = type(model).__name__
    if args.pt2:
        # Saved through a buffer: torch.export.save wants a path ending in .pt2, and the atomic
        # temporary file beside the target has another suffix.
        buffer = io.BytesIO()
        torch.export.save(export_program(model), buffer)
        atomic_write_bytes(args.pt2, buffer.getvalue())
        print(f"wrote torch.export program of {name} to {args.pt2}")
    if args.onnx:
        processor = processor_for(args.model, model.config.image_size, {})
        metadata = onnx_metadata(model, processor, class_names(model.config))
        if args.int8:
            _export_int8(model, args.onnx, args.opset, metadata)
        else:
            export_onnx(model, args.onnx, opset=args.opset, metadata=metadata)
        outputs = ", ".join(exported_names(model))
        print(f"wrote {'int8 ' if args.int8 else ''}ONNX graph of {name} to {args.onnx} (input pixel_values: batch x {model.config.num_channels} x "
              f"{model.config.image_size} x {model.config.image_size}, dynamic batch; outputs: {outputs}; "
              f"metadata: {', '.join(metadata)})")
        if args.no_check:
            return 0
        if importlib.util.find_spec("onnxruntime") is None:
            print("onnxruntime is not installed; skipped the check against PyTorch (pip install onnxruntime)")
            return 0
        differences = compare_onnx(model, args.onnx, batch_sizes=CHECK_BATCH_SIZES)
        report = ", ".join(f"{output} {d:.2e}" for output, d in differences.items())
        print(f"onnxruntime vs PyTorch on batches of {' and '.join(map(str, CHECK_BATCH_SIZES))}, largest absolute difference: {report}")
        if not args.int8 and max(differences.values()) > args.atol:
            print(f"deit export: error: the ONNX graph differs from PyTorch by more than --atol {args.atol:g}", file=sys.stderr)
            return 1
    return 0


def _export_int8(model, path: str, opset: int | None, metadata: dict[str, str]) -> None:
    """The float export, quantized by deit.optimize's int8 recipe into ``path`` (atomically), metadata kept."""
    import tempfile
    from pathlib import Path

    import onnx

    from ..export import export_onnx
    from ..atomic import atomic_path
    from ..onnx_engine import quantize_int8

    with tempfile.TemporaryDirectory() as folder:
        float_path = export_onnx(model, Path(folder) / "float.onnx", opset=opset, metadata=metadata)
        quantized = Path(folder) / "int8.onnx"
        quantize_int8(float_path, quantized)
        graph = onnx.load(str(quantized))
        del graph.metadata_props[:]
        graph.metadata_props.extend(onnx.load(str(float_path), load_external_data=False).metadata_props)
        with atomic_path(Path(path)) as tmp:
            onnx.save(graph, str(tmp))
