"""ONNX Runtime as the engine behind :func:`deit.optimize`, in float32 and in int8.

The graph ONNX Runtime runs is the inference model's own computation
(:class:`deit.inference_model.InferenceModel` on PyTorch's default kernels), exported once, so it keeps
the savings that a graph exported from the model itself lacks: the softmax scale is folded into
the query weights, and the last block computes its queries, attention, residual and MLP only for
the rows of the tokens the heads read ([CLS] and [DIST]), not for all 198. Its attention is ONNX
Runtime's own ``com.microsoft.MultiHeadAttention`` on three matmuls' outputs (batch, tokens,
hidden): no transposes into and out of per-head layouts, no split of a fused q/k/v output and no
copy of the transposed keys, which the exporter's rendering of PyTorch's attention has: 4-12 %
faster than that on DeiT-Ti and DeiT-S on an AMD Zen 3 (benchmarks/onnx_graph_choices.py;
BENCHMARKS.md). ONNX Runtime then fuses and schedules that graph with its own CPU kernels
(MLAS), which on some CPUs beat PyTorch's.

``int8``: ONNX Runtime's dynamic quantization of that graph. The weights of the matmuls are
int8, one scale per output channel (symmetric; 7 bits on CPUs without VNNI, see
:func:`_has_vnni`); each call quantizes the matmuls' inputs to uint8 with one scale and zero
point per tensor, from the tensor's own range (no calibration data). One scale per tensor
instead was no faster and less accurate (benchmarks/int8_recipe.py; BENCHMARKS.md).
Kept in float32, by choice:

* the patch embedding (a convolution on the normalised pixels): the first layer, whose rounding
  error every later layer carries, and about 1 % of the work (ONNX Runtime's ConvInteger was
  slower than its float convolution at batch 1);
* the heads ([CLS] and [DIST] classifiers): their error lands in the logits unfiltered, and on
  one or two rows they cost nothing;
* attention's own two products (queries x keys, probabilities x values, inside the
  MultiHeadAttention op): both operands are activations, with no weight to quantize ahead of
  time; quantizing both per call (uint8 x uint8) gained nothing at DeiT's 198 tokens, and ONNX
  Runtime's own default leaves them float;
* LayerNorm, softmax, GELU and the residual additions: element-wise work in float32, as
  quantized transformers keep it.

The session is built once, when :func:`deit.optimize` is called, and lives in the returned model
(in memory); ``cache_dir`` also keeps the ONNX file(s) there and reuses them on the next call with
the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_path
from .inference_model import InferenceModel
from .model_rules import model_kind
from .modeling import DeiTPreTrainedModel, check_pixel_values

__all__ = ["onnxruntime_available", "onnxruntime_session", "quantize_int8", "OnnxRuntimeModel", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's needs are installed (``pip install deit[onnx]``).
    Looked up, not imported: importing ``onnx`` takes about a second (its ``ml_dtypes``), which a
    ``deit predict`` whose engine graph is already in the cache never needs."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class _MultiHeadAttention(torch.autograd.Function):
    """``softmax(q k^T) v`` per head of pre-scaled queries, keys and values (batch, tokens, hidden),
    recorded by the ONNX exporter as ONNX Runtime's ``com.microsoft.MultiHeadAttention`` (scale 1).
    The computation here only gives the tracer the output's shape and values."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int) -> torch.Tensor:
        batch_size, queries, width = query.shape

        def per_head(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, num_heads, width // num_heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(per_head(query), per_head(key), per_head(value), scale=1.0)
        return context.transpose(1, 2).reshape(batch_size, queries, width)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, num_heads: int) -> Any:
        context = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=num_heads, scale_f=1.0)
        return context.setType(query.type())  # the queries' shape and type: what the exporter's shape inference needs


class _GraphAttention(nn.Module):
    """One block's attention as the graph computes it: queries, keys and values from three
    matmuls whose weights are the thirds of the block's fused (and pre-scaled) q/k/v weight, kept
    as weights of their own (so the int8 quantizer sees a matmul by a weight), then
    :class:`_MultiHeadAttention`. Only the rows asked for get queries."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.num_heads = block.num_heads
        width = block.width
        for i, name in enumerate(("query", "key", "value")):
            rows = slice(i * width, (i + 1) * width)
            self.register_buffer(f"{name}_weight", block.qkv_weight[rows].clone())
            self.register_buffer(f"{name}_bias", None if block.qkv_bias is None else block.qkv_bias[rows].clone())

    def forward(self, normed: torch.Tensor, query_tokens: int = 0) -> torch.Tensor:
        queries = normed[:, :query_tokens] if query_tokens else normed
        return _MultiHeadAttention.apply(F.linear(queries, self.query_weight, self.query_bias),
                                         F.linear(normed, self.key_weight, self.key_bias),
                                         F.linear(normed, self.value_weight, self.value_bias), self.num_heads)


class _TokensGraph(nn.Module):
    """The inference model's body with a tensor-only signature: pixel values in, the final
    LayerNorm's output for the tokens the heads read out (batch, heads, hidden). The heads run
    after the session, in PyTorch (float32 in every precision, and one or two rows: nothing to gain)."""

    def __init__(self, inference: InferenceModel) -> None:
        super().__init__()
        self.inference = inference
        self.attentions = nn.ModuleList(_GraphAttention(block) for block in inference.layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inference.encode(pixel_values, last_tokens=len(self.inference.heads), attentions=list(self.attentions))[0]


def _export(inference: InferenceModel, path: Path) -> None:
    """The inference model (PyTorch's default kernels) as an ONNX file with a dynamic batch axis.
    TorchScript tracing: a few seconds for DeiT-B, where the dynamo exporter takes tens."""
    config = inference.config
    example = torch.randn(1, config.num_channels, config.image_size, config.image_size)
    graph = _TokensGraph(inference).eval()
    # Tracing warns of every Python value it records (the token counts: constants here), and that
    # the TorchScript exporter is the older one: the one that records an autograd function's
    # ``symbolic`` (the contrib attention op), and several times faster than the newer one.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, (example,), str(path), input_names=["pixel_values"], output_names=["tokens"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "tokens": {0: "batch"}}, opset_version=17, dynamo=False,
                          custom_opsets={"com.microsoft": 1})


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``source`` with its weight matmuls in int8 (see the module docstring), written to ``target``.
    Also for the file ``deit export --onnx`` writes: there the heads are in the graph, as MatMul
    or Gemm nodes by their ``classifier`` weights, and stay float32 as the patch embedding's Conv
    does (a head is a tenth of a percent of the work, and its logits are what a user reads)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    weights = {init.name for init in graph.initializer}
    # Only matmuls by a weight: attention's products of two activations stay float32 (the
    # patch embedding is a Conv, the heads are not in the graph).
    activation_products = [node.name for node in graph.node if node.op_type == "MatMul" and not weights.intersection(node.input)]
    # (ONNX Runtime's quantizer first rewrites a Gemm as a MatMul named NAME_MatMul.)
    heads = [name for node in graph.node if node.op_type in ("MatMul", "Gemm") and any("classifier" in i for i in node.input)
             for name in (node.name, f"{node.name}_MatMul")]
    with without_preprocessing_advice():
        quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8, reduce_range=not _has_vnni(),
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=activation_products + heads)


# The start of the warning ONNX Runtime's quantizer logs on every call for a file without its
# "pre-processing" (shape inference and graph cleanup it applies itself before quantizing): advice
# for static quantization with calibration, which dynamic quantization does not need.
_PREPROCESSING_ADVICE = "Please consider to run pre-processing before quantization"


@contextlib.contextmanager
def without_preprocessing_advice() -> Iterator[None]:
    """Leaves out the quantizer's pre-processing advice (:data:`_PREPROCESSING_ADVICE`), and nothing else, while it runs."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_PREPROCESSING_ADVICE)

    root = logging.getLogger()  # the quantizer logs through logging.warning, the root logger
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _has_vnni() -> bool:
    """Whether the CPU has a VNNI dot product (AVX-512 VNNI or AVX-VNNI), which accumulates
    uint8 x int8 products in int32. Without it ONNX Runtime's uint8 x int8 kernel adds pairs of
    products in int16 with saturation (VPMADDUBSW), which on DeiT-S's activations clipped enough to
    move the largest logit error from 0.03 to 0.14: there the weights use 7 bits (``reduce_range``),
    which cannot saturate, at the same speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _weights_digest(inference: InferenceModel) -> str:
    """A digest of the weights and the graph's settings: the name of its cached ONNX file."""
    digest = hashlib.sha256(f"{inference.source_class.__name__}|{inference.config.to_json_string()}".encode())
    for name, tensor in inference.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _graph_file(inference: InferenceModel, precision: str, folder: Path) -> Path:
    """The ONNX file of ``inference`` in ``precision`` inside ``folder``, written there unless it is already."""
    stem = f"deit-{_weights_digest(inference)}"
    fp32, int8 = folder / f"{stem}.onnx", folder / f"{stem}-int8.onnx"
    if not fp32.exists():
        with atomic_path(fp32) as tmp:
            _export(inference, tmp)
    if precision == "int8" and not int8.exists():
        with atomic_path(int8) as tmp:
            quantize_int8(fp32, tmp)
    return int8 if precision == "int8" else fp32


def onnxruntime_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = True) -> Any:
    """A CPU session of the ONNX file at ``path`` on ``threads`` threads (default: PyTorch's),
    with every graph optimization of ONNX Runtime. ``spinning``: whether its threads spin
    between operators (ONNX Runtime's default, kept by the engine: see benchmarks/onnx_graph_choices.py)."""
    import onnxruntime

    path, threads = Path(path), threads or torch.get_num_threads()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(InferenceModel):
    """:class:`~deit.inference_model.InferenceModel` whose plain calls (``pixel_values``, ``return_dict``)
    run in an ONNX Runtime session of its graph, in ``precision`` ``"fp32"`` or ``"int8"``.

    In float32 the arguments the graph does not take (``output_hidden_states``,
    ``interpolate_pos_encoding``, ``last_layer_tokens``) run on PyTorch's kernels, with the same
    weights; in int8 they raise an error (they would silently change precision). Classifiers
    only: a bare ``DeiTModel`` returns every token, which leaves ONNX Runtime nothing to save.
    """

    def __init__(self, model: DeiTPreTrainedModel, precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"the ONNX Runtime engine runs one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not model_kind(model).heads:
            raise TypeError(f"the ONNX Runtime engine serves the classification models, not {type(model).__name__}: "
                            "use deit.optimize(model, backend='torch')")
        if not onnxruntime_available():
            raise ImportError("the ONNX Runtime engine needs onnx and onnxruntime: pip install 'deit[onnx]'")
        super().__init__(model.float() if model.dtype != torch.float32 else model, torch.float32, linear_kernel="default")
        self.precision = precision
        self.threads = threads or torch.get_num_threads()
        if cache_dir is not None:
            folder = Path(cache_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self.session = onnxruntime_session(_graph_file(self, precision, folder), self.threads)
        else:
            with tempfile.TemporaryDirectory() as folder:
                self.session = onnxruntime_session(_graph_file(self, precision, Path(folder)), self.threads)

    def forward(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        arguments = self._arguments(pixel_values, args, kwargs) if args or kwargs else {}
        unserved = [name for name in ("output_hidden_states", "interpolate_pos_encoding", "last_layer_tokens") if arguments.get(name)]
        if unserved or self.config.output_hidden_states:
            if self.precision == "int8":
                raise ValueError(f"the int8 model deit.optimize returns does not take {', '.join(unserved) or 'output_hidden_states'}=...: "
                                 "use the float32 model (deit.optimize(model)) or the original model")
            return super().forward(pixel_values, *args, **kwargs)
        check_pixel_values(self.config, pixel_values, False)
        if torch.is_grad_enabled() and pixel_values.requires_grad:
            raise RuntimeError("the model deit.optimize returns computes no gradients; use the original model for them")
        if pixel_values.device.type != "cpu":
            raise RuntimeError(f"the model deit.optimize returns runs on the CPU, got pixel_values on {pixel_values.device}")
        feed = {"pixel_values": pixel_values.detach().float().contiguous().numpy()}
        tokens = torch.from_numpy(self.session.run(["tokens"], feed)[0])
        return_dict = arguments.get("return_dict")
        return self.classify(tokens, None, self.config.return_dict if return_dict is None else return_dict)
