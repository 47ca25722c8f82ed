"""Which change to the graph of deit.optimize's ONNX Runtime engine pays: variants of that graph
and of its session timed against each other and against the peer (ONNX Runtime on the file
``deit export --onnx`` writes), in the same interleaved rounds, with each variant's largest logit
error against the PyTorch model.

Variants: the engine as it is (session, then the heads in PyTorch); its graph alone (what the heads
cost); ONNX Runtime's transformer fusions (``onnxruntime.transformers.optimizer``, model_type
"vit": SkipLayerNormalization, BiasGelu); attention exported as ONNX Runtime's fused
``com.microsoft.MultiHeadAttention`` (its own CPU kernel) instead of reshapes, transposes, two
MatMuls and a Softmax; the heads inside the graph; the session's threads not spinning.

    .venv/bin/python benchmarks/onnx_graph_choices.py --sizes tiny,small --batch-sizes 1,16 --threads 2
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

from deit import onnx_engine
from deit.bench.inference import onnxruntime_peer, preset_config
from deit.bench.timing import interleaved, machine_summary, set_threads
from deit.modeling import DeiTForImageClassificationWithTeacher


def ops(path: Path) -> str:
    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common() if op in ("MultiHeadAttention", "SkipLayerNormalization", "Transpose", "MatMul", "Gemm", "Softmax"))


def run_size(size: str, batch_sizes: list[int], rounds: int, folder: Path) -> None:
    import onnxruntime

    torch.manual_seed(0)
    model = DeiTForImageClassificationWithTeacher(preset_config(size)).eval()
    for p in model.parameters():  # random, distinct weights (no two initializers alike), logits of a few units
        torch.nn.init.normal_(p, std=0.05)
    engines = {name: onnx_engine.OnnxRuntimeModel(model, cache_dir=folder / name, choices=choices)
               for name, choices in onnx_engine.GRAPH_VARIANTS.items()}
    peer = onnxruntime_peer("onnxruntime", model, str(folder / "peer"))
    # The same peer file in a session whose threads do not spin either: what that option alone does.
    quiet_peer = onnx_engine.onnxruntime_session(folder / "peer" / "model.onnx", spinning=False)
    quiet_output = quiet_peer.get_outputs()[0].name
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(pixels).logits
    print(f"\n## DeiT-{size}: largest logit error on 4 random inputs (|logit| up to {expected.abs().max():.2f}) and graph ops\n")
    for name, engine in engines.items():
        with torch.inference_mode():
            error = (engine(pixels).logits - expected).abs().max()
        print(f"- {name}: {error:.2e}; {ops(next((folder / name).glob('*.onnx')))}")
    print(f"- peer: {(torch.from_numpy(peer(pixels)) - expected).abs().max():.2e}")
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224)
        calls = {name: (lambda e=engine: e(x)) for name, engine in engines.items()}
        calls["peer"] = lambda: peer(x)
        calls["peer, no spinning"] = lambda: quiet_peer.run([quiet_output], {"pixel_values": x.numpy()})
        with torch.inference_mode():
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
    args = parser.parse_args()
    set_threads(args.threads)
    print(machine_summary())
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            run_size(size, [int(b) for b in args.batch_sizes.split(",")], args.rounds, Path(folder) / size)
    print(f"\n{machine_summary()}")


if __name__ == "__main__":
    main()
