"""The frozen CPU inference model that :func:`deit.optimize.optimize` builds from a model's weights.

The eager model loses time outside the useful arithmetic on the CPU, and PyTorch's float32
matrix products go through MKL, which on non-Intel processors runs far below the machine's
AVX-512 speed. The inference model is built once from the model's weights and computes the
same function with the fused oneDNN kernels of :mod:`deit.kernels`:

* query, key and value are one matmul on their concatenated weights, with the softmax scale
  folded into the query rows; attention reads q, k and v from that one output;
* every matmul runs on a weight prepacked for the CPU's GEMM, with the bias, the MLP's GELU
  and (float32) the residual addition in the kernel's epilogue;
* each block calls these ops directly: no module calls, dropouts or wrappers in between (at
  batch 1 a DeiT-Ti matmul takes some 50 us, a module call a few);
* in bfloat16 on CPUs whose bf16 matmul is slower than float32 (Intel AVX-512 BF16 without
  AMX; :mod:`deit.probes` measures it), or that have none (AVX2), the matmuls take their bf16
  operands widened to float32 -- exactly, so each product is the one the bf16 kernel computes
  -- and attention runs in float32; what is rounded to bfloat16 is what the bf16 model keeps
  in bfloat16, the residual stream and the LayerNorm outputs.

What the inference model is not: trainable (no parameters, ``train()`` raises), hookable per
part (it has no per-part modules), or a model to save (its packed weights are in the CPU
kernel's layout). It serves the inference arguments of the model's ``forward``
(``pixel_values``, ``interpolate_pos_encoding``, ``output_hidden_states``, ``return_dict``);
``head_mask``, ``output_attentions``, ``labels``, ``teacher_logits``, ``bool_masked_pos`` and
gradients raise an error that says to use the original model, which :func:`optimize` leaves as
it was. It is an ordinary module of buffers and registered ops, so ``torch.compile`` and
``torch.export`` work on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .model_rules import activation_function, model_kind, output_names
from .modeling import DeiTLayer, DeiTPreTrainedModel, activation, check_pixel_values, interpolate_position_embeddings
from .outputs import BaseModelOutputWithPooling, DeiTForImageClassificationWithTeacherOutput, ImageClassifierOutput
from .probes import BF16_MATMUL_MODES, bf16_kernels_available, bf16_matmul_is_fast, fast_kernels_available, onednn_fp32_wins

__all__ = ["InferenceModel"]

# Rows the packed weights are laid out for: DeiT's 198 tokens of one image.
_PACKED_ROWS = 198
# How the matmuls run: "onednn" (weights prepacked for oneDNN's GEMM, the bias, GELU and residual
# addition in its epilogue), "default" (PyTorch's F.linear on the plain weights: MKL in float32;
# activation and addition after it), or "auto" (see _linear_kernel).
LINEAR_KERNELS = ("auto", "onednn", "default")
# The tasks (deit.model_rules.ModelKind.task) of the models the inference model serves.
SERVED_TASKS = ("base", "image-classification")
# Arguments of the models' forward that the inference model serves; any other raises an error.
_SERVED = frozenset({"pixel_values", "interpolate_pos_encoding", "output_hidden_states", "return_dict", "last_layer_tokens",
                     "distillation_type", "distillation_alpha", "distillation_tau"})  # (the last three: loss settings only)


def _arithmetic_dtype(dtype: torch.dtype, bf16_matmul: str) -> torch.dtype:
    """The dtype the matmuls of a ``dtype`` model run in (see the module docstring)."""
    if dtype != torch.bfloat16:
        return dtype
    if not bf16_kernels_available() or bf16_matmul == "fp32" or (bf16_matmul == "auto" and not bf16_matmul_is_fast()):
        return torch.float32
    return torch.bfloat16


def _linear_kernel(arithmetic: torch.dtype, choice: str) -> str:
    """The matmul kernel for ``arithmetic`` (see :data:`LINEAR_KERNELS`): for ``"auto"`` oneDNN's
    bf16 kernel where the matmuls run in bf16, and for float32 whichever of oneDNN and PyTorch's
    default (MKL) :func:`deit.probes.onednn_fp32_wins` measured the faster on this CPU."""
    if choice not in LINEAR_KERNELS:
        raise ValueError(f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)}, got {choice!r}")
    if choice != "auto":
        if choice == "onednn" and not fast_kernels_available():
            raise ValueError("linear_kernel='onednn': this PyTorch build has no oneDNN matmul kernel; use 'default' or 'auto'")
        return choice
    if not fast_kernels_available():
        return "default"
    return "onednn" if arithmetic == torch.bfloat16 or onednn_fp32_wins() else "default"


class _Frozen(nn.Module):
    """Buffers made from parameters: rounded to the model's dtype first (what the plain model
    computes with), then cast to the arithmetic dtype (exact) and, for oneDNN matmul weights, packed."""

    def __init__(self, dtype: torch.dtype, arithmetic: torch.dtype, kernel: str) -> None:
        super().__init__()
        self.dtype, self.arithmetic, self.kernel = dtype, arithmetic, kernel

    def keep(self, name: str, tensor: torch.Tensor | None, *, arithmetic: bool = False) -> None:
        if tensor is not None:
            tensor = tensor.detach().to(self.dtype)
            tensor = (tensor.to(self.arithmetic) if arithmetic else tensor).clone()
        self.register_buffer(name, tensor)

    def keep_matmul(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """A matmul's prepacked weight and its bias, as ``{name}_weight`` and ``{name}_bias``."""
        self.keep(f"{name}_weight", weight, arithmetic=True)
        if self.kernel == "onednn":
            self.register_buffer(f"{name}_weight", kernels.pack_weight(getattr(self, f"{name}_weight"), _PACKED_ROWS))
        self.keep(f"{name}_bias", bias, arithmetic=True)

    def linear(self, x: torch.Tensor, name: str, activation: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
        """The matmul ``name`` on ``x``, then ``activation`` (oneDNN only) or ``+ residual``."""
        weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        if self.kernel == "onednn":
            return kernels.linear(x, weight, bias, activation, residual)
        out = F.linear(x, weight, bias)
        return out if residual is None else out.add_(residual)


class _InferenceBlock(_Frozen):
    """One pre-norm transformer block: x + proj(attention(qkv(LN(x)))), then x + fc2(act(fc1(LN(x))))."""

    def __init__(self, layer: DeiTLayer, hidden_act: str, dtype: torch.dtype, arithmetic: torch.dtype, kernel: str) -> None:
        super().__init__(dtype, arithmetic, kernel)
        attention = layer.attention.attention
        self.num_heads, self.eps = attention.num_attention_heads, layer.layernorm_before.eps
        self.width = layer.layernorm_before.weight.shape[0]  # a plain int: a traced graph keeps it constant
        self.keep("norm1_weight", layer.layernorm_before.weight)
        self.keep("norm1_bias", layer.layernorm_before.bias)
        self.keep("norm2_weight", layer.layernorm_after.weight)
        self.keep("norm2_bias", layer.layernorm_after.bias)
        projections = (attention.query, attention.key, attention.value)
        # The scale is applied in float32 and rounded once, as the bf16 kernel would see it.
        scale = torch.ones(3 * attention.all_head_size)
        scale[: attention.all_head_size] = attention.scale
        qkv_weight = torch.cat([p.weight.detach().float() for p in projections]) * scale[:, None]
        qkv_bias = None if attention.query.bias is None else torch.cat([p.bias.detach().float() for p in projections]) * scale
        self.keep_matmul("qkv", qkv_weight, qkv_bias)
        self.keep_matmul("proj", layer.attention.output.dense.weight, layer.attention.output.dense.bias)
        self.keep_matmul("fc1", layer.intermediate.dense.weight, layer.intermediate.dense.bias)
        self.keep_matmul("fc2", layer.output.dense.weight, layer.output.dense.bias)
        # oneDNN applies the activation functions it knows in the matmul's epilogue; any other,
        # and every one on PyTorch's default kernel, runs after the matmul as the model's module.
        function = activation_function(hidden_act)
        fused = kernel == "onednn" and function in kernels.ACTIVATIONS
        self.fused_act = function if fused else "none"
        self.separate_act = None if fused else activation(hidden_act)
        # One oneDNN could fuse runs in the matmul's arithmetic, as in the epilogue; any other in
        # the model's dtype, as the model's module computes it.
        self.act_dtype = self.arithmetic if function in kernels.ACTIVATIONS else dtype

    def _residual_add(self, residual: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.dtype == torch.float32:  # the addition in the epilogue is the same float32 addition
            return self.linear(x, name, residual=residual)
        return residual + self.linear(x, name).to(self.dtype)

    def attention(self, normed: torch.Tensor, query_tokens: int = 0) -> torch.Tensor:
        """The attention context of the first ``query_tokens`` rows (0: all) of the normalised tokens."""
        qkv = self.linear(normed.to(self.arithmetic), "qkv")
        return kernels.attention(qkv, self.num_heads, query_tokens)

    def forward(self, x: torch.Tensor, query_tokens: int = 0,
                attention: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """``attention``: another computation of :meth:`attention` on this block's weights (the
        graph an exporter records, :mod:`deit.onnx_engine`)."""
        width = self.width
        normed = F.layer_norm(x, (width,), self.norm1_weight, self.norm1_bias, self.eps)
        context = (attention or self.attention)(normed, query_tokens)
        if query_tokens:
            x = x[:, :query_tokens]
        x = self._residual_add(x, context, "proj")
        normed = F.layer_norm(x, (width,), self.norm2_weight, self.norm2_bias, self.eps)
        hidden = self.linear(normed.to(self.arithmetic), "fc1", self.fused_act)
        if self.separate_act is not None:
            hidden = self.separate_act(hidden.to(self.act_dtype)).to(self.arithmetic)
        return self._residual_add(x, hidden, "fc2")


class InferenceModel(_Frozen):
    """The frozen inference copy of a DeiT / ViT model that :func:`optimize` returns.

    Same forward signature and outputs as the model's class for the inference arguments (see the
    module docstring); ``config`` is the model's (shared).
    """

    def __init__(self, model: DeiTPreTrainedModel, dtype: torch.dtype, bf16_matmul: str = "auto", linear_kernel: str = "auto") -> None:
        try:
            kind = model_kind(model)
        except ValueError:
            raise TypeError(f"deit.optimize takes a deit model (DeiTModel, DeiTForImageClassification[WithTeacher], or their "
                            f"ViT twins), got {type(model).__name__}") from None
        if kind.task not in SERVED_TASKS:
            raise TypeError(f"deit.optimize serves DeiTModel and the classification models, not {type(model).__name__}: "
                            "run masked image modeling with the model itself")
        if bf16_matmul not in BF16_MATMUL_MODES:
            raise ValueError(f"bf16_matmul must be one of {', '.join(BF16_MATMUL_MODES)}, got {bf16_matmul!r}")
        arithmetic = _arithmetic_dtype(dtype, bf16_matmul)
        super().__init__(dtype, arithmetic, _linear_kernel(arithmetic, linear_kernel))
        self.config = model.config
        self.source_class = type(model)
        self._signature = inspect.signature(type(model).forward)
        body = model.backbone
        embeddings = body.embeddings
        self.patch_size, self.num_prefix_tokens = embeddings.patch_embeddings.patch_size, embeddings.num_prefix_tokens
        self.grid_size = embeddings.patch_embeddings.grid_size
        self.keep("patch_weight", embeddings.patch_embeddings.projection.weight)
        self.keep("patch_bias", embeddings.patch_embeddings.projection.bias)
        self.keep("prefix_tokens", embeddings.prefix_tokens(1))
        self.keep("position_embeddings", embeddings.position_embeddings)
        self.layers = nn.ModuleList(_InferenceBlock(layer, model.config.hidden_act, dtype, self.arithmetic, self.kernel) for layer in body.encoder.layer)
        self.keep("norm_weight", body.layernorm.weight)
        self.keep("norm_bias", body.layernorm.bias)
        self.eps = body.layernorm.eps
        # Heads (plain linear maps on one or two tokens: too small for the packed kernel to pay).
        self.tokens_read = getattr(type(model), "tokens_read", None)
        self.pooler_activation = None
        if "pooler_output" in output_names(model):
            self.keep("pooler_weight", model.pooler.dense.weight)
            self.keep("pooler_bias", model.pooler.dense.bias)
            self.pooler_activation = activation(model.config.pooler_act)
        self.heads = kind.heads  # in the order of the tokens they read
        for name in self.heads:
            head = getattr(model, name)
            self.keep(f"{name}_weight", getattr(head, "weight", None))  # None: num_labels = 0, an identity head
            self.keep(f"{name}_bias", getattr(head, "bias", None))
        self.eval()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("the model deit.optimize returns is for inference only; train the original model")
        return super().train(False)

    def _arguments(self, pixel_values: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, as the model's forward would bind them; an error for one the inference model does not serve."""
        arguments = self._signature.bind(self, pixel_values, *args, **kwargs).arguments
        for name, value in arguments.items():
            if name not in _SERVED and name != "self" and value is not None and value is not False:
                raise ValueError(f"the model deit.optimize returns does not take {name}=...; call the original "
                                 f"{self.source_class.__name__} (deit.optimize leaves it unchanged)")
        return arguments

    def _embed(self, pixel_values: torch.Tensor, interpolate: bool) -> torch.Tensor:
        """Patch embeddings, prefix tokens and positions (the model's own arithmetic: a convolution)."""
        x = F.conv2d(pixel_values, self.patch_weight, self.patch_bias, stride=self.patch_size).flatten(2).transpose(1, 2)
        x = torch.cat((self.prefix_tokens.expand(x.shape[0], -1, -1), x), dim=1)
        positions = self.position_embeddings
        if interpolate:
            height, width = pixel_values.shape[2] // self.patch_size, pixel_values.shape[3] // self.patch_size
            positions = interpolate_position_embeddings(positions, self.num_prefix_tokens, self.grid_size, height, width)
        return x + positions

    def _head(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        weight = getattr(self, f"{name}_weight")
        return tokens if weight is None else F.linear(tokens, weight, getattr(self, f"{name}_bias"))

    def forward(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        arguments = self._arguments(pixel_values, args, kwargs) if args or kwargs else {}
        interpolate = bool(arguments.get("interpolate_pos_encoding", False))
        config = self.config
        output_hidden_states = arguments.get("output_hidden_states")
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = arguments.get("return_dict")
        return_dict = config.return_dict if return_dict is None else return_dict
        check_pixel_values(config, pixel_values, interpolate)
        if torch.is_grad_enabled() and pixel_values.requires_grad:
            raise RuntimeError("the model deit.optimize returns computes no gradients; use the original model for them")
        if pixel_values.device.type != "cpu":
            raise RuntimeError(f"the model deit.optimize returns runs on the CPU, got pixel_values on {pixel_values.device}")

        last_tokens = 0 if output_hidden_states else (arguments.get("last_layer_tokens") or self.tokens_read or 0)
        sequence, hidden = self.encode(pixel_values, interpolate, output_hidden_states, last_tokens)
        if not self.heads:
            pooled = None
            if self.pooler_activation is not None:
                pooled = self.pooler_activation(F.linear(sequence[:, 0], self.pooler_weight, self.pooler_bias))
            output = BaseModelOutputWithPooling(sequence, pooled, hidden, None)
            return output if return_dict else output.to_tuple()
        return self.classify(sequence, hidden, return_dict)

    def encode(self, pixel_values: torch.Tensor, interpolate: bool = False, output_hidden_states: bool = False,
               last_tokens: int = 0, attentions: Sequence[Callable[[torch.Tensor, int], torch.Tensor]] | None = None,
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The final LayerNorm's output (only the first ``last_tokens`` tokens, which the last
        block then computes alone, when > 0) and the hidden states if asked for; ``attentions``:
        each block's attention computed another way (see :meth:`_InferenceBlock.forward`)."""
        x = self._embed(pixel_values.to(self.dtype), interpolate)
        hidden_states = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            x = layer(x, last_tokens if i == len(self.layers) - 1 else 0, attentions[i] if attentions else None)
            if hidden_states is not None:
                hidden_states.append(x)
        sequence = F.layer_norm(x, (self.config.hidden_size,), self.norm_weight, self.norm_bias, self.eps)
        return sequence, tuple(hidden_states) if hidden_states is not None else None

    def classify(self, sequence: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None, return_dict: bool) -> Any:
        """The classifier's output from the final LayerNorm's output: head i reads token i ([CLS]
        for the classifier, [CLS] and [DIST] for the two of a distilled model)."""
        logits = [self._head(name, sequence[:, i]) for i, name in enumerate(self.heads)]
        if len(logits) == 1:
            output: Any = ImageClassifierOutput(None, logits[0], hidden, None)
        else:
            cls_logits, distillation_logits = logits
            output = DeiTForImageClassificationWithTeacherOutput(None, (cls_logits + distillation_logits) / 2, cls_logits,
                                                                 distillation_logits, hidden, None)
        return output if return_dict else output.to_tuple()
