"""Inference throughput: ours against what a deploying user would pick, in one interleaved run.

For each model size, batch size and precision, every implementation is timed on the same input
with the same threads. The peers: transformers (eager, sdpa), timm eager, and in float32 timm
under ``torch.compile`` with Inductor's weight freezing, and ONNX Runtime on the file ``deit
export --onnx`` writes (our model's graph as exported, float32), and that file after ONNX
Runtime's dynamic int8 quantization (its documented recipe: int8 weights, per tensor). In
bfloat16 each peer is timed in each of its settings (autocast over float32 weights, or the
model cast to bfloat16; ``compile_peers`` adds ``torch.compile`` of both) and its fastest counts.

Ours: :func:`deit.optimize` in that dtype, each of its engines (PyTorch kernels, ONNX Runtime)
timed on its own with the one ``backend="auto"`` picks named; the plain model (the eager
``DeiTForImageClassificationWithTeacher``, what ``optimize`` must never lose to); and in float32
``deit.optimize(model, dtype="int8")``, compared with ONNX Runtime's int8 alone. Two reference
rows come from the same run: the Linear layers alone at the model's shapes with ``F.linear``
and with oneDNN's prepacked kernel (the two kernels ``deit.optimize`` chooses between).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import DeiTConfig
from ..dtypes import DTYPES
from ..modeling import DeiTForImageClassificationWithTeacher
from ..onnx_engine import OnnxRuntimeModel, onnxruntime_available
from ..optimize import InferenceModel, optimize
from ..probes import bf16_kernels_available, bf16_matmul_is_fast, fast_kernels_available
from .timing import interleaved

__all__ = ["SIZES", "Cell", "Row", "model_flops", "benchmark_cell", "format_table", "PEERS", "benchmark_ablation", "format_ablation"]

SIZES = ("tiny", "small", "base")
# Float peers (the compiled and ONNX Runtime ones in float32 only) and the int8 one.
PEERS = ("transformers-sdpa", "transformers-eager", "timm", "timm-compiled", "onnxruntime", "onnxruntime-int8")
INT8_PEERS = ("onnxruntime-int8",)
# Ours as deit.optimize sets it up, each engine, (bf16 on the CPU) the other bf16 matmul choice,
# the plain model, and int8. Each is compared with the best peer of its precision.
OURS_ALTERNATIVE = "ours, other bf16 matmul"
OURS_PLAIN = "ours, plain model"
OURS_INT8 = "ours int8"
OURS = ("ours", "ours, PyTorch engine", "ours, ONNX Runtime engine", "ours+compile", OURS_ALTERNATIVE, OURS_PLAIN, OURS_INT8)
INT8_IMPLEMENTATIONS = (OURS_INT8,) + INT8_PEERS

# Dense bf16 peak (TFLOP/s) of GPUs, to report the fraction reached where a GPU runs this.
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0, "L4": 121.0}


@dataclass
class Cell:
    """One table cell: a model size, a batch size and a precision."""

    size: str
    batch_size: int
    dtype: str


@dataclass
class Row:
    cell: Cell
    name: str  # implementation
    setting: str  # how it ran (e.g. "bf16 autocast + compile")
    images_per_s: float
    compile_s: float | None = None
    details: dict[str, float] = field(default_factory=dict)


# Seconds of back-to-back calls per candidate and round: batch-1 calls take a few ms.
TURN_SECONDS = 0.2


def preset_config(size: str) -> DeiTConfig:
    return DeiTConfig.from_preset(f"deit-{size}-distilled-patch16-224")


def model_flops(config: DeiTConfig, heads: int = 2) -> float:
    """FLOPs (2 per multiply-add) of one image through the full model, as usually counted.

    Ours skips most of the last layer for the tokens the heads do not read; the count does not
    credit that, so every implementation is measured against the same work."""
    d, i, p = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (config.image_size // p) ** 2
    tokens = patches + 2
    per_layer = 2 * tokens * d * (3 * d + d + 2 * i) + 2 * 2 * tokens * tokens * d
    return 2 * patches * config.num_channels * p * p * d + config.num_hidden_layers * per_layer + heads * 2 * d * config.num_labels


def _linear_shapes(config: DeiTConfig) -> list[tuple[int, int]]:
    d, i = config.hidden_size, config.intermediate_size
    return [(d, 3 * d), (d, d), (d, i), (i, d)] * config.num_hidden_layers


def linear_only(config: DeiTConfig, batch_size: int, dtype: torch.dtype, device: torch.device, kernel: str) -> Callable[[], None]:
    """One forward's Linear layers alone (fused q/k/v shape), with ``F.linear`` or oneDNN."""
    tokens = (config.image_size // config.patch_size) ** 2 + 2
    rows = batch_size * tokens
    gen = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(rows, k, generator=gen).to(device, dtype) for k in {config.hidden_size, config.intermediate_size}}
    layers = []
    for k, n in _linear_shapes(config):
        weight = (torch.randn(n, k, generator=gen) * 0.02).to(device, dtype)
        bias = torch.zeros(n).to(device, dtype)
        if kernel == "onednn":
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        layers.append((inputs[k], weight, bias))

    def run() -> None:
        with torch.inference_mode():
            for x, w, b in layers:
                if kernel == "onednn":
                    torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
                else:
                    F.linear(x, w, b)

    return run


def _peer_model(name: str, config: DeiTConfig, ours: torch.nn.Module) -> torch.nn.Module | None:
    """The peer's distilled DeiT classifier, a PyTorch module (None when the package is not installed)."""
    try:
        if name.startswith("transformers"):
            import transformers
        else:
            import timm
    except ImportError:
        return None
    if name == "timm-compiled":
        return _frozen_compile(_peer_model("timm", config, ours))
    if name.startswith("transformers"):
        # Through the files, as users load it: transformers renames its modules on load.
        with tempfile.TemporaryDirectory() as folder:
            ours.save_pretrained(folder)
            model = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(folder, attn_implementation=name.split("-", 1)[1])
        return model.eval()
    size = next(s for s in SIZES if preset_config(s).hidden_size == config.hidden_size)
    return timm.create_model(f"deit_{size}_distilled_patch16_224", pretrained=False).eval()


def _frozen_compile(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with Inductor's freezing (weights as constants: folded, prepacked for the
    CPU's GEMM), as PyTorch recommends for CPU inference."""
    import torch._inductor.config as inductor

    inductor.freezing = True  # read at compile time (the first call); the benchmark compiles nothing else that trains
    return torch.compile(model, dynamic=False)


def onnxruntime_peer(name: str, model: torch.nn.Module, folder: str) -> Callable[[torch.Tensor], object] | None:
    """A call of ONNX Runtime on the file ``deit export --onnx`` writes for ``model`` (float32, or
    after ONNX Runtime's dynamic int8 quantization for ``onnxruntime-int8``); None without it."""
    from ..onnx_engine import onnxruntime_available, onnxruntime_session

    if not onnxruntime_available():
        return None
    from ..export import export_onnx

    path = Path(folder) / "model.onnx"
    if not path.exists():
        export_onnx(model, path)
    if name == "onnxruntime-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from ..onnx_engine import without_preprocessing_advice

        quantized = path.with_name("model-int8.onnx")
        with without_preprocessing_advice():
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
        path = quantized
    session = onnxruntime_session(path)
    first_output = session.get_outputs()[0].name  # logits
    return lambda x: session.run([first_output], {"pixel_values": x.numpy()})[0]


def _logits(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def _caller(model: torch.nn.Module, x: torch.Tensor, autocast: bool) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        context = torch.autocast(x.device.type, torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), context:
            return _logits(model(x))

    return call


def _compiled(model: torch.nn.Module, call_factory: Callable[[torch.nn.Module], Callable[[], torch.Tensor]]) -> tuple[Callable[[], torch.Tensor], float]:
    compiled = torch.compile(model, dynamic=False)
    call = call_factory(compiled)
    start = time.perf_counter()
    call()
    call()
    return call, time.perf_counter() - start


def _peer_settings(model: torch.nn.Module, x: torch.Tensor, dtype: str, compile_peers: bool) -> Iterator[tuple[str, Callable[[], torch.Tensor], float | None]]:
    """(setting, call, compile seconds) for each way of running a peer in this precision."""
    if dtype == "fp32":
        yield "fp32", _caller(model, x, autocast=False), None
        return
    cast = copy.deepcopy(model).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    yield "bf16 autocast", _caller(model, x, autocast=True), None
    yield "bf16 cast", _caller(cast, xb, autocast=False), None
    if compile_peers:
        call, seconds = _compiled(model, lambda m: _caller(m, x, autocast=True))
        yield "bf16 autocast + compile", call, seconds
        call, seconds = _compiled(cast, lambda m: _caller(m, xb, autocast=False))
        yield "bf16 cast + compile", call, seconds


@dataclass
class Candidates:
    """What one cell times: each candidate's call, and what its row says (implementation name,
    setting, compile seconds), by key."""

    calls: dict[str, Callable[[], object]] = field(default_factory=dict)
    rows: dict[str, tuple[str, str, float | None]] = field(default_factory=dict)

    def add(self, key: str, call: Callable[[], object], name: str, setting: str, compile_s: float | None = None) -> None:
        self.calls[key] = call
        self.rows[key] = (name, setting, compile_s)


def fresh_optimize(model: torch.nn.Module, **options: object) -> torch.nn.Module:
    """``deit.optimize(model, **options)`` with its engine choice measured in this run, not one an
    earlier run kept in the cache folder (a temporary ``cache_dir``)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        return optimize(model, cache_dir=cache_dir, **options)


def _add_ours(found: Candidates, cell: Cell, reference: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype,
              device: torch.device, compile_ours: bool) -> str:
    """Our candidates: each engine of deit.optimize, the plain model, the other bf16 matmul choice,
    compiled (``compile_ours``), int8. Returns the row deit.optimize's own choice is."""
    ours = fresh_optimize(reference, dtype=dtype)
    engine = "onnxruntime" if isinstance(ours, OnnxRuntimeModel) else "torch"
    for name, backend in (("ours, PyTorch engine", "torch"), ("ours, ONNX Runtime engine", "onnxruntime")):
        if backend != "onnxruntime" or (dtype == torch.float32 and device.type == "cpu" and onnxruntime_available()):
            model = ours if backend == engine else optimize(reference, dtype=dtype, backend=backend)
            kernel = f", {model.kernel} matmuls" if backend == "torch" and isinstance(model, InferenceModel) else ""
            found.add(name, _caller(model, x.to(dtype), autocast=False), name, f"{cell.dtype}, backend={backend!r}{kernel}")
    found.add(OURS_PLAIN, _caller(copy.deepcopy(reference).to(dtype), x.to(dtype), autocast=False), OURS_PLAIN, f"{cell.dtype}, the eager model")
    if dtype == torch.bfloat16 and device.type == "cpu" and fast_kernels_available():
        if bf16_kernels_available():
            # Show what deit.optimize chose for the bf16 matmuls here and time the other choice too.
            chosen, other = ("bf16", "fp32") if bf16_matmul_is_fast() else ("fp32", "bf16")
            found.rows["ours, PyTorch engine"] = ("ours, PyTorch engine", f"bf16, deit.optimize, matmuls in {chosen}", None)
            alternative = optimize(reference, dtype=dtype, bf16_matmul=other)
            found.add("ours-alternative", _caller(alternative, x.to(dtype), autocast=False), OURS_ALTERNATIVE, f"bf16, bf16_matmul={other!r}")
        else:  # no other choice to time
            found.rows["ours, PyTorch engine"] = ("ours, PyTorch engine", "bf16, deit.optimize, matmuls in fp32 (no bf16 matmul on this CPU)", None)
    if compile_ours:
        ours_compiled = _frozen_compile(optimize(reference, dtype=dtype, backend="torch"))
        call, seconds = _compiled(ours_compiled, lambda m: _caller(m, x.to(dtype), autocast=False))
        found.add("ours+compile", call, "ours+compile", f"{cell.dtype}, deit.optimize(backend='torch') + compile (freezing)", seconds)
    if dtype == torch.float32 and device.type == "cpu" and onnxruntime_available():
        found.add(OURS_INT8, _caller(optimize(reference, dtype="int8"), x, autocast=False), OURS_INT8, "deit.optimize(dtype='int8'), ONNX Runtime")
    return "ours, ONNX Runtime engine" if engine == "onnxruntime" else "ours, PyTorch engine"


def _add_peers(found: Candidates, cell: Cell, reference: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, device: torch.device,
               peers: tuple[str, ...], compile_peers: bool, folder: str, log: Callable[[str], None]) -> None:
    """The peers installed here, each in its settings for the cell's precision (ONNX files written in ``folder``)."""
    for peer in peers:
        if peer in ("timm-compiled", "onnxruntime", "onnxruntime-int8") and (dtype != torch.float32 or device.type != "cpu"):
            continue  # float32 CPU peers (the bf16 cells compile with compile_peers)
        if peer.startswith("onnxruntime"):
            run = onnxruntime_peer(peer, reference, folder)
            if run is None:
                log(f"{peer}: onnxruntime not installed, skipped")
                continue
            found.add(peer, functools.partial(run, x), peer, "int8 dynamic, on deit export --onnx" if peer in INT8_PEERS else "fp32, on deit export --onnx")
            continue
        model = _peer_model(peer, reference.config, reference)
        if model is None:
            log(f"{peer}: not installed, skipped")
            continue
        model = model.to(device)
        if peer == "timm-compiled":
            call, seconds = _compiled(model, lambda m: _caller(m, x, autocast=False))
            found.add(peer, call, peer, "fp32, torch.compile, freezing", seconds)
            continue
        for setting, call, seconds in _peer_settings(model, x, cell.dtype, compile_peers):
            found.add(f"{peer}/{setting}", call, peer, setting, seconds)


def _add_linear_bounds(found: Candidates, cell: Cell, config: DeiTConfig, dtype: torch.dtype, device: torch.device) -> None:
    """The Linear layers alone at the model's shapes, with F.linear and (where it runs) oneDNN."""
    found.add("linear-only F.linear", linear_only(config, cell.batch_size, dtype, device, "torch"), "Linear-only bound (F.linear)", cell.dtype)
    if device.type == "cpu" and fast_kernels_available() and (dtype != torch.bfloat16 or bf16_kernels_available()):
        found.add("linear-only oneDNN", linear_only(config, cell.batch_size, dtype, device, "onednn"), "Linear-only bound (oneDNN)", cell.dtype)


def benchmark_cell(
    cell: Cell,
    device: torch.device,
    rounds: int = 5,
    peers: tuple[str, ...] = PEERS,
    compile_peers: bool = False,
    compile_ours: bool = False,
    linear_bounds: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Time every implementation for one cell in one interleaved run; one Row per candidate."""
    config = preset_config(cell.size)
    torch.manual_seed(0)
    reference = DeiTForImageClassificationWithTeacher(config).eval().to(device)
    x = torch.randn(cell.batch_size, 3, config.image_size, config.image_size, device=device)
    dtype = DTYPES[cell.dtype]
    found = Candidates()
    chosen = _add_ours(found, cell, reference, x, dtype, device, compile_ours)
    with tempfile.TemporaryDirectory() as folder:
        _add_peers(found, cell, reference, x, dtype, device, peers, compile_peers, folder, log)
    if linear_bounds:
        _add_linear_bounds(found, cell, config, dtype, device)

    log(f"{cell.size} batch {cell.batch_size} {cell.dtype}: timing {len(found.calls)} candidates x {rounds} rounds")
    timings = interleaved(found.calls, rounds=rounds, device=device, min_seconds=TURN_SECONDS)
    timings["ours"] = timings[chosen]  # deit.optimize's own result: the engine it picked
    found.rows["ours"] = ("ours", f"{cell.dtype}, deit.optimize: {found.rows[chosen][0].split(', ', 1)[1]}", None)
    rows = []
    for key, timing in timings.items():
        name, setting, seconds = found.rows[key]
        rows.append(Row(cell, name, setting, cell.batch_size / timing.best, seconds,
                        {"median_images_per_s": cell.batch_size / timing.median, "quiet_rounds": timing.quiet_rounds, "rounds": rounds}))
    return rows


def best_by_implementation(rows: list[Row]) -> dict[str, Row]:
    """Each implementation's fastest setting in a cell."""
    best: dict[str, Row] = {}
    for row in rows:
        if row.name not in best or row.images_per_s > best[row.name].images_per_s:
            best[row.name] = row
    return best


def _ratio(row: Row, reference: Row | None) -> str:
    """Best rounds against each other, and in brackets the median rounds: near 1.00x the two
    together say whether a difference outlasts the run-to-run noise."""
    if reference is None:
        return ""
    median = row.details["median_images_per_s"] / reference.details["median_images_per_s"]
    return f"{row.images_per_s / reference.images_per_s:.2f}x ({median:.2f}x)"


def format_table(rows: list[Row], device: torch.device) -> str:
    """A Markdown table: per cell, ours and each peer at its best setting, plus the bounds."""
    cells: dict[tuple[str, int, str], list[Row]] = {}
    for row in rows:
        cells.setdefault((row.cell.size, row.cell.batch_size, row.cell.dtype), []).append(row)
    gpu_peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu_peak = next((v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in name), None)
    header = ("| model | batch | dtype | implementation (best setting) | images/s | vs best peer (median) | vs ours plain (median) | GFLOP/s "
              "| of F.linear bound | of oneDNN bound | quiet rounds |")
    lines = [header, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (size, batch, dtype), cell_rows in cells.items():
        flops = model_flops(preset_config(size))
        best = best_by_implementation(cell_rows)
        bound_torch = best.pop("Linear-only bound (F.linear)", None)
        bound_dnn = best.pop("Linear-only bound (oneDNN)", None)
        peer_rows = [r for n, r in best.items() if n in PEERS]
        # The best peer of each precision: int8 rows are compared with int8 peers only.
        best_float = max((r for r in peer_rows if r.name not in INT8_PEERS), key=lambda r: r.images_per_s, default=None)
        best_int8 = max((r for r in peer_rows if r.name in INT8_PEERS), key=lambda r: r.images_per_s, default=None)
        plain = best.get(OURS_PLAIN)
        ordered = [best[n] for n in OURS if n in best] + sorted(peer_rows, key=lambda r: -r.images_per_s)
        for row in ordered + [r for r in (bound_torch, bound_dnn) if r is not None]:
            timed = row.name in OURS + PEERS
            best_peer = best_int8 if row.name in INT8_IMPLEMENTATIONS else best_float
            ratio = _ratio(row, best_peer) if timed else ""
            vs_plain = _ratio(row, plain) if timed and row.name in OURS else ""
            gflops = row.images_per_s * flops / 1e9 if timed else None
            gflops_text = f"{gflops:.0f}" if gflops is not None else ""
            if gflops is not None and gpu_peak:
                gflops_text += f" ({gflops / (gpu_peak * 1e3):.0%} of peak)"
            frac_t = f"{row.images_per_s / bound_torch.images_per_s:.0%}" if bound_torch and timed else ""
            frac_d = f"{row.images_per_s / bound_dnn.images_per_s:.0%}" if bound_dnn and timed else ""
            label = f"{row.name} ({row.setting})"
            if row.compile_s is not None:
                label += f", compile {row.compile_s:.0f} s"
            quiet = f"{row.details['quiet_rounds']}/{row.details['rounds']}"
            lines.append(f"| DeiT-{size[0].upper()} | {batch} | {dtype} | {label} | {row.images_per_s:.1f} | {ratio} | {vs_plain} | {gflops_text} | {frac_t} | {frac_d} | {quiet} |")
    return "\n".join(lines)


def benchmark_ablation(cell: Cell, device: torch.device, rounds: int = 5, compile_step: bool = False,
                       log: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Ours step by step (the plain model, then :func:`deit.optimize`, then compiled), timed in one interleaved run."""
    config = preset_config(cell.size)
    torch.manual_seed(0)
    dtype = DTYPES[cell.dtype]
    reference = DeiTForImageClassificationWithTeacher(config).eval().to(device, dtype)
    x = torch.randn(cell.batch_size, 3, config.image_size, config.image_size, device=device).to(dtype)

    full_last_layer = copy.deepcopy(reference)
    full_last_layer.tokens_read = None  # as the reference implementations: every token to the end
    candidates: dict[str, Callable[[], object]] = {
        "plain model, last layer for all tokens": _caller(full_last_layer, x, autocast=False),
        "+ last layer only for the tokens the heads read": _caller(reference, x, autocast=False),
        "+ deit.optimize (fused q/k/v and attention, oneDNN matmuls with epilogues)": _caller(fresh_optimize(reference), x, autocast=False),
    }
    compile_seconds = None
    if compile_step:
        candidates["+ torch.compile"], compile_seconds = _compiled(fresh_optimize(reference), lambda m: _caller(m, x, autocast=False))
    log(f"ablation {cell.size} batch {cell.batch_size} {cell.dtype}: {len(candidates)} steps x {rounds} rounds")
    timings = interleaved(candidates, rounds=rounds, device=device, min_seconds=TURN_SECONDS)
    return [Row(cell, name, cell.dtype, cell.batch_size / t.best, compile_seconds if name == "+ torch.compile" else None,
                {"quiet_rounds": t.quiet_rounds, "rounds": rounds}) for name, t in timings.items()]


def format_ablation(rows: list[Row]) -> str:
    lines = ["| model | batch | dtype | step | images/s | vs previous step | vs plain | quiet rounds |", "|---|---|---|---|---:|---:|---:|---:|"]
    first = previous = None
    for row in rows:
        first = first or row.images_per_s
        change = f"{row.images_per_s / previous:.2f}x" if previous else ""
        name = row.name + (f" (compile {row.compile_s:.0f} s)" if row.compile_s is not None else "")
        quiet = f"{row.details['quiet_rounds']}/{row.details['rounds']}"
        lines.append(f"| DeiT-{row.cell.size[0].upper()} | {row.cell.batch_size} | {row.cell.dtype} | {name} | {row.images_per_s:.1f} | {change} "
                     f"| {row.images_per_s / first:.2f}x | {quiet} |")
        previous = row.images_per_s
    return "\n".join(lines)
