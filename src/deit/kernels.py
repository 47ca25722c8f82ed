"""The fused CPU kernels, as registered ops: ``torch.ops.deit.linear`` and ``torch.ops.deit.attention``.

Registered with ``torch.library.custom_op`` and a fake (meta) implementation each, so that
``torch.compile`` and ``torch.export`` see them as single ops with known output shapes (the
attention loops over the batch in Python, which a tracer could not follow). In eager mode the
wrappers below call the implementations directly: the dispatcher's Python round trip costs a
few microseconds per call, and at batch 1 a DeiT-Ti matmul takes only some 50.

* :func:`linear`: ``activation(x @ W.T + b)`` or ``x @ W.T + b + residual`` in one oneDNN call,
  on a weight prepacked by :func:`pack_weight` (the bias, the GELU and the residual addition
  are the kernel's epilogue: no extra pass over the output).
* :func:`attention`: ``softmax(q k^T) v`` for all heads from one (batch, tokens, 3 * hidden)
  projection whose query rows carry the softmax scale already. float32 runs PyTorch's fused
  SDPA kernel on strided views of it (no copies); bfloat16 runs batched matmuls two samples at
  a time, so that the scores stay in cache: about twice as fast as SDPA's bf16 kernel at DeiT's
  198 tokens on AMD Zen 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "pack_weight", "linear", "attention"]

# Activation function (a value of deit.model_rules.ACTIVATION_FUNCTIONS, which maps a config's
# hidden_act to it) -> oneDNN post-op (name, algorithm) fused after a matmul; "none": no
# activation. The other functions run separately, after the matmul.
ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_pytorch_tanh": ("gelu", "tanh"), "relu": ("relu", ""), "silu": ("swish", ""),
               "none": ("none", "")}
# Samples per attention chunk: the best measured for DeiT-Ti/S/B at 198 tokens on a 2-core
# AVX-512 CPU (one sample leaves the batched matmuls too small, four spill the L2 cache).
SAMPLES_PER_CHUNK = 2


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (out, in) reordered once into the layout of the CPU's GEMM kernel, chosen for
    inputs of ``rows`` rows (other row counts work too). Not a weight to save or move: rebuild it."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


@torch.library.custom_op("deit::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
               residual: torch.Tensor | None) -> torch.Tensor:
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    name, algorithm = ACTIVATIONS[activation]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, name, [], algorithm)


@_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
      residual: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("deit::attention", mutates_args=())
def _attention_op(qkv: torch.Tensor, num_heads: int, query_tokens: int) -> torch.Tensor:
    batch_size, seq_len, width = qkv.shape
    head_size = width // (3 * num_heads)
    out_len = seq_len if query_tokens <= 0 else min(query_tokens, seq_len)
    heads = qkv.view(batch_size, seq_len, 3, num_heads, head_size)
    if qkv.dtype == torch.float32:
        query, key, value = heads.permute(2, 0, 3, 1, 4).unbind(0)
        context = F.scaled_dot_product_attention(query[:, :, :out_len], key, value, scale=1.0)
        return context.transpose(1, 2).reshape(batch_size, out_len, num_heads * head_size)
    context = qkv.new_empty(batch_size, out_len, num_heads, head_size)
    for start in range(0, batch_size, SAMPLES_PER_CHUNK):
        chunk = slice(start, start + SAMPLES_PER_CHUNK)
        # One copy into (3, samples * heads, tokens, head_size): contiguous per-head matrices.
        query, key, value = heads[chunk].permute(2, 0, 3, 1, 4).reshape(3, -1, seq_len, head_size).unbind(0)
        probs = torch.bmm(query[:, :out_len], key.transpose(1, 2)).softmax(-1)
        context[chunk] = torch.bmm(probs, value).view(-1, num_heads, out_len, head_size).transpose(1, 2)
    return context.view(batch_size, out_len, num_heads * head_size)


@_attention_op.register_fake
def _(qkv: torch.Tensor, num_heads: int, query_tokens: int) -> torch.Tensor:
    batch_size, seq_len, width = qkv.shape
    out_len = seq_len if query_tokens <= 0 else min(query_tokens, seq_len)
    return qkv.new_empty(batch_size, out_len, width // 3)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none",
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` (``activation``: a function named in :data:`ACTIVATIONS`), or with
    ``residual`` ``x @ weight.T + bias + residual``; ``weight`` from :func:`pack_weight`."""
    op = _linear_op if torch.compiler.is_compiling() else _linear_op._init_fn
    return op(x, weight, bias, activation, residual)


def attention(qkv: torch.Tensor, num_heads: int, query_tokens: int = 0) -> torch.Tensor:
    """The attention context (batch, queries, hidden) of pre-scaled q/k/v projections
    (batch, tokens, 3 * hidden), for the first ``query_tokens`` queries (0: all)."""
    op = _attention_op if torch.compiler.is_compiling() else _attention_op._init_fn
    return op(qkv, num_heads, query_tokens)
