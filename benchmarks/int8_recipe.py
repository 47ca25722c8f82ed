"""Which choice of the int8 recipe costs speed: variants of ONNX Runtime's dynamic quantization
timed against each other and against the peer (ONNX Runtime's default ``quantize_dynamic`` of the
file ``deit export --onnx`` writes), in the same interleaved rounds.

The variants quantize the graph :func:`deit.optimize` exports (attention as ONNX Runtime's
MultiHeadAttention on three matmuls, the last block on the heads' rows) and differ in one choice
each from the recipe :func:`deit.onnx_engine.quantize_int8`: weight scales per channel or per
tensor, 7-bit or 8-bit weights (``reduce_range``), the patch embedding's convolution in float32 or
int8. (Attention's two products of activations are inside the MultiHeadAttention op, which dynamic
quantization leaves in float32; the variants that put them in int8 measured the graph before it,
whose attention was plain MatMuls: BENCHMARKS.md.) Each line also gives the largest logit error against
the float32 model on the same random inputs (random weights: the error, not the agreement, is
what means something there), and the operators ONNX Runtime runs after its graph optimizations.

    .venv/bin/python benchmarks/int8_recipe.py --sizes tiny,small --batch-sizes 1,16 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

from deit.bench.inference import onnxruntime_peer, preset_config
from deit.bench.timing import interleaved, machine_summary, set_threads
from deit.inference_model import InferenceModel
from deit.modeling import DeiTForImageClassificationWithTeacher
from deit.onnx_engine import _export, onnxruntime_session

# name -> (per_channel, reduce_range, patch convolution in int8)
VARIANTS = {
    "per-channel, 7-bit (the recipe)": (True, True, False),
    "per-channel, 8-bit": (True, False, False),
    "per-tensor, 7-bit": (False, True, False),
    "per-tensor, 8-bit": (False, False, False),
    "per-tensor, 8-bit, conv int8": (False, False, True),
}


def quantize(source: Path, target: Path, per_channel: bool, reduce_range: bool, conv: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                     op_types_to_quantize=["MatMul"] + (["Conv"] if conv else []), extra_options={"MatMulConstBOnly": True})


def optimized_ops(path: Path, folder: Path) -> str:
    """The operators ONNX Runtime runs for ``path`` after its graph optimizations, with counts."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(folder / f"{path.stem}-optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())


def run_size(size: str, batch_sizes: list[int], rounds: int, folder: Path, variants: list[str]) -> None:
    torch.manual_seed(0)
    model = DeiTForImageClassificationWithTeacher(preset_config(size)).eval()
    inference = InferenceModel(model, torch.float32, linear_kernel="default")
    source = folder / f"{size}.onnx"
    _export(inference, source)
    files = {}
    for name in variants:
        choice = VARIANTS[name]
        files[name] = folder / f"{size}-{len(files)}.onnx"
        quantize(source, files[name], *choice)
    sessions = {name: onnxruntime_session(path) for name, path in files.items()}
    peer = onnxruntime_peer("onnxruntime-int8", model, str(folder / size))  # (writes into that folder)
    pixels = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(pixels).logits
    print(f"\n## DeiT-{size}: largest logit error on 8 random inputs (random weights, |logit| up to {expected.abs().max():.2f})\n")
    for name, session in sessions.items():
        tokens = torch.from_numpy(session.run(["tokens"], {"pixel_values": pixels.numpy()})[0])
        error = (inference.classify(tokens, None, True).logits - expected).abs().max()
        print(f"- {name}: {error:.4f}; ops: {optimized_ops(files[name], folder)}")
    print(f"- peer (quantize_dynamic defaults on deit export --onnx): {(torch.from_numpy(peer(pixels)) - expected).abs().max():.4f}; "
          f"ops: {optimized_ops(folder / size / 'model-int8.onnx', folder)}")
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224).numpy()
        calls = {name: (lambda s=session: s.run(["tokens"], {"pixel_values": x})) for name, session in sessions.items()}
        calls["peer"] = lambda: peer(torch.from_numpy(x))
        timings = interleaved(calls, rounds=rounds, min_seconds=0.5)
        base = timings["peer"]
        print(f"\n## DeiT-{size}, batch {batch}: images/s (best round; ratio to the peer, best and median)\n")
        print("| variant | images/s | vs peer (best) | vs peer (median) |\n|---|---:|---:|---:|")
        for name, timing in timings.items():
            print(f"| {name} | {batch / timing.best:.1f} | {base.best / timing.best:.2f}x | {base.median / timing.median:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(map(str, range(len(VARIANTS)))),
                        help="which variants, by their position in VARIANTS (default: all)")
    args = parser.parse_args()
    variants = [list(VARIANTS)[int(i)] for i in args.variants.split(",")]
    set_threads(args.threads)
    print(machine_summary())
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            (Path(folder) / size).mkdir()
            run_size(size, [int(b) for b in args.batch_sizes.split(",")], args.rounds, Path(folder), variants)
    print(f"\n{machine_summary()}")


if __name__ == "__main__":
    main()
