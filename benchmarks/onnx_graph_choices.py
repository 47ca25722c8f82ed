"""Which change to the graph or session of deit.optimize's ONNX Runtime engine would pay: variants
timed against the engine and against the peer (ONNX Runtime on the file ``deit export --onnx``
writes), in the same interleaved rounds, with each variant's largest logit error against the
PyTorch model.

The variants change one thing each in the graph the engine exports (deit.onnx_engine): attention
as the exporter records PyTorch's (the engine's fused q/k/v matmul, then Split, Transpose, two
MatMuls and a Softmax per block: the engine's graph before ONNX Runtime's MultiHeadAttention);
ONNX Runtime's transformer fusions (``onnxruntime.transformers.optimizer``, model_type "vit": it
finds SkipLayerNormalization); the heads inside the graph (one session run, no PyTorch after it);
and the session's threads not spinning between operators.

Wall time (``--cpu-time`` off) is what a user waits. Under other processes' load, spinning
threads lose their time slices and wall time mostly measures the load; ``--cpu-time`` then
compares the variants without spinning by the CPU time a call takes, the work it does.

    .venv/bin/python benchmarks/onnx_graph_choices.py --sizes tiny,small --batch-sizes 1,16 --threads 2
    .venv/bin/python benchmarks/onnx_graph_choices.py --cpu-time --rounds 7 --min-seconds 1
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

from deit import onnx_engine
from deit.bench.inference import onnxruntime_peer, preset_config
from deit.bench.timing import interleaved, machine_summary, set_threads
from deit.inference_model import InferenceModel
from deit.modeling import DeiTForImageClassificationWithTeacher

# name -> (attention as PyTorch's, transformer fusions, heads in the graph, threads spin)
VARIANTS = {
    "graph as the engine's": (False, False, False, True),
    "attention as PyTorch's": (True, False, False, True),
    "transformer fusions": (False, True, False, True),
    "heads in graph": (False, False, True, True),
    "without spinning": (False, False, False, False),
    "attention as PyTorch's without spinning": (True, False, False, False),
    "transformer fusions without spinning": (False, True, False, False),
    "heads in graph without spinning": (False, False, True, False),
}


class GraphWithHeads(torch.nn.Module):
    """The engine's graph with the heads in it: pixel values in, each head's logits out (batch, heads, labels)."""

    def __init__(self, inference: InferenceModel) -> None:
        super().__init__()
        self.inference = inference
        self.tokens = onnx_engine._TokensGraph(inference)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(pixel_values)
        return torch.stack([self.inference._head(name, tokens[:, i]) for i, name in enumerate(self.inference.heads)], 1)


class PyTorchAttentionGraph(torch.nn.Module):
    """The engine's graph with the inference model's own attention (fused q/k/v, PyTorch's SDPA) as the exporter records it."""

    def __init__(self, inference: InferenceModel) -> None:
        super().__init__()
        self.inference = inference

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inference.encode(pixel_values, last_tokens=len(self.inference.heads))[0]


def export_variant(inference: InferenceModel, path: Path, pytorch_attention: bool, fusions: bool, heads: bool) -> None:
    config = inference.config
    if heads or pytorch_attention:
        graph, output = (GraphWithHeads(inference), "logits") if heads else (PyTorchAttentionGraph(inference), "tokens")
        example = torch.randn(1, config.num_channels, config.image_size, config.image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph.eval(), (example,), str(path), input_names=["pixel_values"], output_names=[output],
                              dynamic_axes={"pixel_values": {0: "batch"}, output: {0: "batch"}}, opset_version=17, dynamo=False,
                              custom_opsets={"com.microsoft": 1})
    else:
        onnx_engine._export(inference, path)
    if fusions:
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(path), model_type="vit", num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
                       opt_level=0).save_model_to_file(str(path))


def ops(path: Path) -> str:
    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common()
                     if op in ("MultiHeadAttention", "SkipLayerNormalization", "Transpose", "MatMul", "Gemm", "Softmax"))


def cpu_seconds(calls: dict[str, Callable[[], object]], rounds: int, min_seconds: float) -> dict[str, list[float]]:
    """CPU seconds (this process, all threads) per call of each candidate, rounds interleaved: the
    work a call does, which other processes' load does not inflate as it does wall time (for
    sessions whose threads do not spin: a spinning thread's wait counts as CPU time too)."""
    per_call: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for r in range(rounds):
        for name in list(calls)[r % len(calls):] + list(calls)[: r % len(calls)]:
            count, start, wall = 0, time.process_time(), time.perf_counter()
            while count == 0 or time.perf_counter() - wall < min_seconds:
                calls[name]()
                count += 1
            per_call[name].append((time.process_time() - start) / count)
    return per_call


def run_size(size: str, batch_sizes: list[int], rounds: int, folder: Path, variants: list[str], min_seconds: float, cpu_time: bool) -> None:
    torch.manual_seed(0)
    model = DeiTForImageClassificationWithTeacher(preset_config(size)).eval()
    for p in model.parameters():  # random, distinct weights (no two initializers alike)
        torch.nn.init.normal_(p, std=0.05)
    engine = onnx_engine.OnnxRuntimeModel(model)
    inference = InferenceModel(model, torch.float32, linear_kernel="default")
    calls_of: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if not cpu_time:
        calls_of["the engine"] = lambda x: engine(x).logits
    for name in variants:
        pytorch_attention, fusions, heads, spinning = VARIANTS[name]
        path = folder / f"{size}-{len(calls_of)}.onnx"
        export_variant(inference, path, pytorch_attention, fusions, heads)
        session = onnx_engine.onnxruntime_session(path, spinning=spinning)
        if heads:
            calls_of[name] = lambda x, s=session: torch.from_numpy(s.run(["logits"], {"pixel_values": x.numpy()})[0]).mean(1)
        else:
            calls_of[name] = lambda x, s=session: inference.classify(torch.from_numpy(s.run(["tokens"], {"pixel_values": x.numpy()})[0]), None, True).logits
        print(f"- {name}: {ops(path)}")
    (folder / "peer").mkdir()
    peer = onnxruntime_peer("onnxruntime", model, str(folder / "peer"))
    quiet_peer = onnx_engine.onnxruntime_session(folder / "peer" / "model.onnx", spinning=False)
    quiet_output = quiet_peer.get_outputs()[0].name
    if not cpu_time:
        calls_of["peer"] = lambda x: torch.from_numpy(peer(x))
    calls_of["peer without spinning"] = lambda x: torch.from_numpy(quiet_peer.run([quiet_output], {"pixel_values": x.numpy()})[0])
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(pixels).logits
        errors = {name: (call(pixels) - expected).abs().max().item() for name, call in calls_of.items()}
    print(f"\n## DeiT-{size}: largest logit error on 4 random inputs (|logit| up to {expected.abs().max():.2f})\n")
    print("; ".join(f"{name} {error:.1e}" for name, error in errors.items()))
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224)
        calls = {name: (lambda c=call: c(x)) for name, call in calls_of.items() if not cpu_time or "without spinning" in name}
        with torch.inference_mode():
            if cpu_time:
                seconds = cpu_seconds(calls, rounds, min_seconds)
                base = seconds["peer without spinning"]
                print(f"\n## DeiT-{size}, batch {batch}: CPU ms per image, sessions without spinning (best and median round; ratio to the peer's)\n")
                print("| variant | CPU ms/image (best) | (median) | vs peer (best) | vs peer (median) |\n|---|---:|---:|---:|---:|")
                for name, values in seconds.items():
                    print(f"| {name} | {1e3 * min(values) / batch:.1f} | {1e3 * statistics.median(values) / batch:.1f} | "
                          f"{min(base) / min(values):.2f}x | {statistics.median(base) / statistics.median(values):.2f}x |")
                continue
            timings = interleaved(calls, rounds=rounds, min_seconds=min_seconds)
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
    parser.add_argument("--min-seconds", type=float, default=0.5, help="the shortest turn of a candidate in a round")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which, by name, comma-separated (default: all)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="compare the variants without spinning by the CPU time a call takes (robust to other processes' load)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(machine_summary())
    variants = [name for name in args.variants.split(",") if not args.cpu_time or "without spinning" in name]
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            (Path(folder) / size).mkdir()
            run_size(size, [int(b) for b in args.batch_sizes.split(",")], args.rounds, Path(folder) / size, variants,
                     args.min_seconds, args.cpu_time)
    print(f"\n{machine_summary()}")


if __name__ == "__main__":
    main()
