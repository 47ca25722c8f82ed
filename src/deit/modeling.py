"""DeiT in plain PyTorch, readable top to bottom.

One body (:class:`DeiTModel`) and thin heads on top of it. Module and parameter names are the
Hugging Face ones (``deit.encoder.layer.0.attention.attention.query.weight``, ...), so the
checkpoints on the Hub load with a plain ``load_state_dict`` and ours load in ``transformers``.
The plain-ViT classes used by the non-distilled DeiT checkpoints are the same modules with one
prefix token instead of two.

Token layout: ``[CLS], [DIST], patch_1 ... patch_N`` (ViT: ``[CLS], patch_1 ... patch_N``).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import initialisation
from .config import DeiTConfig, ViTConfig
from .hf_api import CheckpointingEncoder, PreTrainedModel
from .losses import DistillationLoss
from .model_rules import (
    activation_function,
    check_masked_positions_shape,
    check_pixel_values_shape,
    class_name_for_config,
    head_mask_shapes,
    problem_type_for,
)
from .outputs import (
    BaseModelOutputWithPooling,
    DeiTForImageClassificationWithTeacherOutput,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# The module of each activation function (deit.model_rules.ACTIVATION_FUNCTIONS maps the config's names to these).
_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "quick_gelu": _QuickGELU,
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A new module computing the activation that the config name ``name`` means."""
    return _ACTIVATION_MODULES[activation_function(name)]()


# ---------------------------------------------------------------------------- embeddings
class DeiTPatchEmbeddings(nn.Module):
    """Cut the image into non-overlapping patches and project each to ``hidden_size``."""

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.grid_size = config.image_size // config.patch_size
        self.num_patches = self.grid_size**2
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, hidden, H/p, W/p) -> (B, N, hidden)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


def interpolate_position_embeddings(position_embeddings: torch.Tensor, num_prefix_tokens: int, native_grid: int,
                                    grid_height: int, grid_width: int) -> torch.Tensor:
    """Position embeddings (1, prefix + native_grid**2, dim) resampled (bicubic) to a patch grid
    of another size.

    Same arithmetic as the reference: the prefix positions are kept, the patch positions are
    resized with ``F.interpolate(size=..., align_corners=False)``.
    """
    if (grid_height, grid_width) == (native_grid, native_grid):
        return position_embeddings
    prefix = position_embeddings[:, :num_prefix_tokens]
    patches = position_embeddings[:, num_prefix_tokens:]
    dim = patches.shape[-1]
    patches = patches.reshape(1, native_grid, native_grid, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid_height, grid_width), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
    return torch.cat((prefix, patches), dim=1)


class DeiTEmbeddings(nn.Module):
    """Patch embeddings plus the prefix tokens ([CLS], and [DIST] for DeiT) and learned positions."""

    def __init__(self, config: DeiTConfig, use_mask_token: bool = False, num_prefix_tokens: int = 2) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Registered before the patch embeddings so the parameter order is the Hugging Face one.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if num_prefix_tokens == 2 else None
        self.patch_embeddings = DeiTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.patch_embeddings.num_patches + num_prefix_tokens, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def prefix_tokens(self, batch_size: int) -> torch.Tensor:
        tokens = self.cls_token if self.distillation_token is None else torch.cat((self.cls_token, self.distillation_token), dim=1)
        return tokens.expand(batch_size, -1, -1)

    def interpolated_position_embeddings(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings resampled to a patch grid of another size (:func:`interpolate_position_embeddings`)."""
        return interpolate_position_embeddings(self.position_embeddings, self.num_prefix_tokens, self.patch_embeddings.grid_size,
                                               grid_height, grid_width)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        _, _, height, width = pixel_values.shape
        embeddings = self.patch_embeddings(pixel_values)
        batch_size, num_patches, _ = embeddings.shape

        if bool_masked_pos is not None:
            # Replace masked patches by the learned mask token (SimMIM).
            mask = bool_masked_pos.reshape(batch_size, num_patches, 1).to(embeddings.dtype)
            embeddings = embeddings * (1.0 - mask) + self.mask_token.to(embeddings.dtype) * mask

        embeddings = torch.cat((self.prefix_tokens(batch_size).to(embeddings.dtype), embeddings), dim=1)
        if interpolate_pos_encoding:
            p = self.patch_embeddings.patch_size
            positions = self.interpolated_position_embeddings(height // p, width // p)
        else:
            positions = self.position_embeddings
        return self.dropout(embeddings + positions.to(embeddings.dtype))


# ----------------------------------------------------------------------------- attention
class DeiTSelfAttention(nn.Module):
    """Multi-head self-attention: SDPA by default, an explicit (eager) path when the attention
    weights are asked for or a head mask is applied."""

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = config.hidden_size
        self.scale = self.attention_head_size**-0.5
        self.dropout_prob = config.attention_probs_dropout_prob
        # The model's config (shared): set_attn_implementation switches every layer at once.
        self.config = config
        self.query = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
        self.key = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
        self.value = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        return x.view(batch_size, seq_len, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        query_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query_tokens``: attend from the first n tokens only (to all tokens); the output then
        has n tokens."""
        queries = hidden_states if query_tokens is None else hidden_states[:, :query_tokens]
        batch_size, seq_len, _ = queries.shape
        query = self._split_heads(self.query(queries))
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))
        dropout_p = self.dropout_prob if self.training else 0.0

        if self.config.attn_implementation == "sdpa" and head_mask is None and not output_attentions:
            context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
            probs = None
        else:
            scores = torch.matmul(query, key.transpose(-1, -2)) * self.scale
            # Softmax in float32 so half-precision attention maps still sum to one.
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
            probs = F.dropout(probs, p=dropout_p, training=self.training)
            if head_mask is not None:
                probs = probs * head_mask
            context = torch.matmul(probs, value)

        context = context.transpose(1, 2).reshape(batch_size, seq_len, self.all_head_size)
        return context, (probs if output_attentions else None)


class DeiTSelfOutput(nn.Module):
    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class DeiTAttention(nn.Module):
    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.attention = DeiTSelfAttention(config)
        self.output = DeiTSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        query_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.attention(hidden_states, head_mask, output_attentions, query_tokens)
        return self.output(context), probs


# ---------------------------------------------------------------------------------- MLP
class DeiTIntermediate(nn.Module):
    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class DeiTOutput(nn.Module):
    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples during training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# --------------------------------------------------------------------------------- layer
class DeiTLayer(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: DeiTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attention = DeiTAttention(config)
        self.intermediate = DeiTIntermediate(config)
        self.output = DeiTOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        query_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query_tokens``: compute the block's output for the first n tokens only."""
        normed = self.layernorm_before(hidden_states)
        attention_output, probs = self.attention(normed, head_mask, output_attentions, query_tokens)
        if query_tokens is not None:
            hidden_states = hidden_states[:, :query_tokens]
        hidden_states = hidden_states + self.drop_path(attention_output)
        mlp_output = self.output(self.intermediate(self.layernorm_after(hidden_states)))
        return hidden_states + self.drop_path(mlp_output), probs


class DeiTEncoder(CheckpointingEncoder):
    """The transformer layers, each checkpointed in training when switched on (:mod:`deit.hf_api`)."""

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        depth = config.num_hidden_layers
        # Stochastic depth grows linearly with depth, as in the DeiT recipe.
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layer = nn.ModuleList(DeiTLayer(config, rate) for rate in rates)

    def forward(
        self,
        hidden_states: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        last_layer_tokens: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """``last_layer_tokens``: run the last layer for the first n tokens only."""
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            layer_head_mask = head_mask[i] if head_mask is not None else None
            query_tokens = last_layer_tokens if i == last else None
            hidden_states, probs = self.run_layer(i, layer, hidden_states, layer_head_mask, output_attentions, query_tokens)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(probs)
        return (
            hidden_states,
            tuple(all_hidden) if all_hidden is not None else None,
            tuple(all_attentions) if all_attentions is not None else None,
        )


class DeiTPooler(nn.Module):
    """Dense + activation on the first ([CLS]) token."""

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size)
        self.activation = activation(config.pooler_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


# ------------------------------------------------------------------------ model classes
class DeiTPreTrainedModel(PreTrainedModel):
    """What every DeiT model class shares: its configuration class, weight initialisation, the
    class that loads a checkpoint, the classification loss. The Hugging Face API (loading, saving,
    gradient checkpointing, PEFT hooks) comes from :class:`deit.hf_api.PreTrainedModel`."""

    config_class: ClassVar[type[DeiTConfig]] = DeiTConfig
    base_model_prefix: ClassVar[str] = "deit"
    # Number of prefix tokens before the patches: [CLS] and [DIST] for DeiT, [CLS] for ViT.
    num_prefix_tokens: ClassVar[int] = 2

    @classmethod
    def init_arguments(cls) -> frozenset[str]:
        """Constructor keywords ``from_pretrained`` passes on to the class it builds (which may be
        this class's ViT/DeiT twin), not to the config."""
        return model_init_arguments()

    @classmethod
    def class_for_config(cls, config: DeiTConfig) -> type["DeiTPreTrainedModel"]:
        """The class that loads a checkpoint with ``config``: this one, or its twin of the other
        model type (:func:`deit.model_rules.class_name_for_config`). The auto classes answer the
        same question from the checkpoint's ``architectures``."""
        if config.model_type == cls.config_class.model_type:
            return cls
        twin = class_name_for_config(cls.__name__, config.model_type)
        if twin not in MODEL_CLASSES:
            raise ValueError(f"{cls.__name__} cannot load a {config.model_type!r} checkpoint (no {twin} class)")
        return MODEL_CLASSES[twin]

    def get_input_embeddings(self) -> DeiTPatchEmbeddings:
        """The patch embeddings (the reference's answer for its vision models)."""
        return self.backbone.embeddings.patch_embeddings

    @property
    def backbone(self) -> "DeiTModel":
        return getattr(self, self.base_model_prefix)

    @torch.no_grad()
    def init_weights(self, *roots: nn.Module) -> None:
        """Truncated-normal weights (std ``initializer_range``), zero biases, unit LayerNorms.

        The prefix tokens and position embeddings are drawn the same way (timm / the DeiT
        authors do this) so that a freshly built model trains well; the mask token starts at 0.
        ``roots`` limits the initialisation to some sub-modules (a head on an initialised body).
        """
        if initialisation.is_deferred():  # from_pretrained: the checkpoint's weights come next
            return
        std = self.config.initializer_range
        for module in (m for root in (roots or (self,)) for m in root.modules()):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, DeiTEmbeddings):
                for token in (module.cls_token, module.distillation_token, module.position_embeddings):
                    if token is not None:
                        nn.init.trunc_normal_(token, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if module.mask_token is not None:
                    nn.init.zeros_(module.mask_token)

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss chosen by ``config.problem_type`` (:func:`deit.model_rules.problem_type_for`)."""
        num_labels = self.config.num_labels
        integer_labels = labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8)
        problem_type = problem_type_for(self.config, integer_labels)
        labels = labels.to(logits.device)
        if problem_type == "regression":
            if num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def check_pixel_values(config: DeiTConfig, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
    """Raise a clear error for pixel values a model with ``config`` cannot read correctly."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    check_pixel_values_shape(config, tuple(pixel_values.shape), interpolate_pos_encoding)


class DeiTModel(DeiTPreTrainedModel):
    """The bare encoder: embeddings, transformer layers, final LayerNorm, optional pooler."""

    def __init__(self, config: DeiTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        self.embeddings = DeiTEmbeddings(config, use_mask_token=use_mask_token, num_prefix_tokens=self.num_prefix_tokens)
        self.encoder = DeiTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = DeiTPooler(config) if add_pooling_layer else None
        self._warned_eager_fallback = False
        self.init_weights()

    @property
    def backbone(self) -> "DeiTModel":
        return self

    def _check_inputs(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool) -> None:
        """Raise a clear ValueError for inputs the model cannot read correctly."""
        check_pixel_values(self.config, pixel_values, interpolate_pos_encoding)
        if bool_masked_pos is not None:
            check_masked_positions_shape(self.config, tuple(pixel_values.shape), tuple(bool_masked_pos.shape),
                                         has_mask_token=self.embeddings.mask_token is not None)

    def _expand_head_mask(self, head_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Turn a [heads] or [layers, heads] mask into [layers, 1, heads, 1, 1] (:func:`deit.model_rules.head_mask_shapes`)."""
        if head_mask is None:
            return None
        full, per_layer = head_mask_shapes(self.config, tuple(head_mask.shape))
        return head_mask.to(self.dtype).expand(full).reshape(per_layer)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        last_layer_tokens: int | None = None,
    ) -> BaseModelOutputWithPooling | tuple[Any, ...]:
        """The arguments of the Hugging Face model, plus ``last_layer_tokens``: compute the last
        layer for the first n tokens only (what a classification head reads), so that
        ``last_hidden_state`` holds n tokens. Ignored when hidden states or attentions are asked for.
        """
        output_attentions, output_hidden_states, return_dict = self._output_flags(output_attentions, output_hidden_states, return_dict)
        self._check_inputs(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        if self.config.attn_implementation == "sdpa" and (output_attentions or head_mask is not None) and not self._warned_eager_fallback:
            warnings.warn(
                "SDPA returns no attention weights and takes no head mask; using the eager attention path for this call. "
                "Load with attn_implementation='eager' to silence this.",
                stacklevel=2,
            )
            self._warned_eager_fallback = True

        embedding_output = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states, all_hidden, all_attentions = self.encoder(
            embedding_output,
            head_mask=self._expand_head_mask(head_mask),
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
            last_layer_tokens=None if output_hidden_states or output_attentions else last_layer_tokens,
        )
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        output = BaseModelOutputWithPooling(sequence_output, pooled_output, all_hidden, all_attentions)
        return output if return_dict else output.to_tuple()


# -------------------------------------------------------------------------------- heads
class _HeadModel(DeiTPreTrainedModel):
    """A head on top of the shared body, kept under ``base_model_prefix`` ("deit" / "vit")."""

    body_class: ClassVar[type[DeiTModel]] = DeiTModel
    # How many leading tokens of the last layer the head reads; None: all. The body skips the
    # rest of the last layer's work (about 1/12 of a 12-layer model).
    tokens_read: ClassVar[int | None] = None

    def __init__(self, config: DeiTConfig, use_mask_token: bool = False) -> None:
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.body_class(config, add_pooling_layer=False, use_mask_token=use_mask_token))

    def _run_body(self, pixel_values: torch.Tensor, output_attentions: bool | None, output_hidden_states: bool | None,
                  **kwargs: Any) -> BaseModelOutputWithPooling:
        output_attentions, output_hidden_states, _ = self._output_flags(output_attentions, output_hidden_states, None)
        return self.backbone(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, last_layer_tokens=self.tokens_read, **kwargs,
        )

    def _returned(self, output: Any, return_dict: bool | None) -> Any:
        """The output dataclass, or its tuple when ``return_dict`` (or, if None, the config) says False."""
        return output if self._output_flags(None, None, return_dict)[2] else output.to_tuple()

    def _linear_head(self) -> nn.Module:
        n = self.config.num_labels
        return nn.Linear(self.config.hidden_size, n) if n > 0 else nn.Identity()


class DeiTForImageClassification(_HeadModel):
    """A linear classifier on the final [CLS] token (the [DIST] token is not used)."""

    tokens_read = 1

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = self._linear_head()
        self.init_weights(self.classifier)

    def forward(
        self,
        pixel_values: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> ImageClassifierOutput | tuple[Any, ...]:
        body = self._run_body(
            pixel_values, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        logits = self.classifier(body.last_hidden_state[:, 0])
        loss = self._classification_loss(logits, labels) if labels is not None else None
        return self._returned(ImageClassifierOutput(loss, logits, body.hidden_states, body.attentions), return_dict)


class DeiTForImageClassificationWithTeacher(_HeadModel):
    """Two linear heads, on the [CLS] and on the [DIST] token; the prediction is their mean.

    Unlike the reference (inference only), this model trains: with ``labels`` the loss is the
    mean of the two heads' losses; with ``labels`` and ``teacher_logits`` it is the DeiT
    distillation loss (CLS head on the labels, DIST head on the teacher; see
    :class:`deit.losses.DistillationLoss`), configured by ``distillation_type``
    ("hard" by default, "soft", "none"), ``distillation_alpha`` and ``distillation_tau``.
    """

    tokens_read = 2

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cls_classifier = self._linear_head()
        self.distillation_classifier = self._linear_head()
        self.init_weights(self.cls_classifier, self.distillation_classifier)

    def forward(
        self,
        pixel_values: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        distillation_type: str = "hard",
        distillation_alpha: float = 0.5,
        distillation_tau: float = 1.0,
    ) -> DeiTForImageClassificationWithTeacherOutput | tuple[Any, ...]:
        body = self._run_body(
            pixel_values, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        sequence = body.last_hidden_state
        cls_logits = self.cls_classifier(sequence[:, 0])
        distillation_logits = self.distillation_classifier(sequence[:, 1])
        logits = (cls_logits + distillation_logits) / 2

        loss = None
        if teacher_logits is not None and labels is None:
            raise ValueError("teacher_logits were given without labels; the distillation loss needs both")
        if labels is not None:
            if teacher_logits is not None:
                loss_fn = DistillationLoss(distillation_type=distillation_type, alpha=distillation_alpha, tau=distillation_tau)
                loss = loss_fn(cls_logits, distillation_logits, labels, teacher_logits)
            else:
                loss = (self._classification_loss(cls_logits, labels) + self._classification_loss(distillation_logits, labels)) / 2
        output = DeiTForImageClassificationWithTeacherOutput(
            loss, logits, cls_logits, distillation_logits, body.hidden_states, body.attentions
        )
        return self._returned(output, return_dict)


class DeiTForMaskedImageModeling(_HeadModel):
    """SimMIM: masked patches are replaced by a mask token and the pixels are reconstructed by a
    1x1 convolution + pixel shuffle; the loss is the L1 error on the masked pixels.

    The patch tokens (after the prefix tokens) form the feature map, as in transformers 5.x. The
    feature map and the mask follow the actual input grid, so a non-default input size with
    ``interpolate_pos_encoding=True`` works too.
    """

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__(config, use_mask_token=True)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, config.encoder_stride**2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(config.encoder_stride),
        )
        self.init_weights(self.decoder)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> MaskedImageModelingOutput | tuple[Any, ...]:
        body = self._run_body(
            pixel_values, bool_masked_pos=bool_masked_pos, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        patch = self.config.patch_size
        grid_h, grid_w = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        tokens = body.last_hidden_state[:, self.num_prefix_tokens :]
        batch_size, _, hidden = tokens.shape
        feature_map = tokens.transpose(1, 2).reshape(batch_size, hidden, grid_h, grid_w)
        reconstruction = self.decoder(feature_map)

        loss = None
        if bool_masked_pos is not None:
            mask = bool_masked_pos.reshape(batch_size, grid_h, grid_w)
            mask = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).to(reconstruction.dtype)
            target = pixel_values[:, :, : mask.shape[2], : mask.shape[3]].to(reconstruction.dtype)
            l1 = F.l1_loss(target, reconstruction, reduction="none")
            loss = (l1 * mask).sum() / (mask.sum() + 1e-5) / self.config.num_channels
        return self._returned(MaskedImageModelingOutput(loss, reconstruction, body.hidden_states, body.attentions), return_dict)


# ------------------------------------------------------------------- plain ViT (non-distilled)
class ViTPreTrainedModel(DeiTPreTrainedModel):
    """The non-distilled DeiT checkpoints are plain ViTs: one prefix token, prefix "vit"."""

    config_class = ViTConfig
    base_model_prefix = "vit"
    num_prefix_tokens = 1


class ViTModel(ViTPreTrainedModel, DeiTModel):
    pass


class ViTForImageClassification(ViTPreTrainedModel, DeiTForImageClassification):
    body_class = ViTModel


class ViTForMaskedImageModeling(ViTPreTrainedModel, DeiTForMaskedImageModeling):
    body_class = ViTModel


MODEL_CLASSES: dict[str, type[DeiTPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (
        DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher, DeiTForMaskedImageModeling,
        ViTModel, ViTForImageClassification, ViTForMaskedImageModeling,
    )
}


@functools.cache
def model_init_arguments() -> frozenset[str]:
    """Keyword arguments of the model constructors besides ``config`` (``add_pooling_layer``,
    ``use_mask_token``): ``from_pretrained`` passes these to the constructor, not to the config."""
    return frozenset(
        name for cls in MODEL_CLASSES.values() for name in inspect.signature(cls.__init__).parameters if name not in ("self", "config")
    )


__all__ = [
    "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTForMaskedImageModeling",
    "DeiTPreTrainedModel", "ViTModel", "ViTForImageClassification", "ViTForMaskedImageModeling", "ViTPreTrainedModel",
    "MODEL_CLASSES", "model_init_arguments",
]
