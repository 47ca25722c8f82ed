"""The DeiT body as Keras 3 layers (``keras.layers`` / ``keras.ops`` only, so it runs on any backend).

The same arithmetic as :mod:`deit.modeling`, which stays the source of truth. Each layer knows the
Hugging Face (PyTorch) name of every variable it owns (:meth:`DeiTKerasLayer.torch_weights`), so
that the models read and write the PyTorch checkpoint layout directly.

Inputs are NCHW as in PyTorch; the patch convolution runs on NHWC (what every backend's CPU
convolution takes) after one transpose.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from ..config import DeiTConfig
from ..model_rules import activation_function
from .weights import TorchWeight

# Each activation function in keras.ops (deit.model_rules.ACTIVATION_FUNCTIONS maps the config's names to these).
_ACTIVATION_FUNCTIONS = {
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: ops.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * ops.sigmoid(1.702 * x),
    "relu": ops.relu,
    "selu": ops.selu,
    "silu": ops.silu,
    "tanh": ops.tanh,
}


def activation(name: str) -> Any:
    """The function computing the activation that the config name ``name`` means."""
    return _ACTIVATION_FUNCTIONS[activation_function(name)]


def _dense(units: int, inputs: int, use_bias: bool = True, name: str | None = None) -> keras.layers.Dense:
    layer = keras.layers.Dense(units, use_bias=use_bias, name=name)
    layer.build((None, inputs))
    return layer


def _layer_norm(config: DeiTConfig, name: str) -> keras.layers.LayerNormalization:
    # Keras' default epsilon is 1e-3; the checkpoints were trained with the config's.
    layer = keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name=name)
    layer.build((None, config.hidden_size))
    return layer


def dense_weights(name: str, layer: keras.layers.Dense) -> list[TorchWeight]:
    out = [TorchWeight(f"{name}.weight", layer.kernel, "linear")]
    if layer.bias is not None:
        out.append(TorchWeight(f"{name}.bias", layer.bias, "plain"))
    return out


def conv_weights(name: str, layer: keras.layers.Conv2D) -> list[TorchWeight]:
    return [TorchWeight(f"{name}.weight", layer.kernel, "conv"), TorchWeight(f"{name}.bias", layer.bias, "plain")]


def _norm_weights(name: str, layer: keras.layers.LayerNormalization) -> list[TorchWeight]:
    return [TorchWeight(f"{name}.weight", layer.gamma, "plain"), TorchWeight(f"{name}.bias", layer.beta, "plain")]


class DeiTKerasLayer(keras.layers.Layer):
    """A layer built at construction (every shape follows from the config) that names its
    variables as the PyTorch module does."""

    def torch_weights(self) -> list[TorchWeight]:
        raise NotImplementedError


# ---------------------------------------------------------------------------- embeddings
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of ``F.interpolate(mode="bicubic", align_corners=False)`` along
    one axis: PyTorch's cubic convolution (A = -0.75), half-pixel centres, borders clamped.

    ``keras.ops.image.resize`` does not match it (the TensorFlow and JAX kernels use A = -0.5), so
    the resampling is this matrix applied along each axis.
    """
    a = -0.75
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5  # not clamped at 0 for cubic, as in PyTorch
        base = math.floor(src)
        t = src - base
        coefficients = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for offset, weight in zip(range(-1, 3), coefficients):
            matrix[dst, min(max(base + offset, 0), in_size - 1)] += weight
    return matrix.astype(np.float32)


class DeiTEmbeddings(DeiTKerasLayer):
    """Patch embeddings, the prefix tokens ([CLS], and [DIST] for DeiT) and learned positions."""

    def __init__(self, config: DeiTConfig, num_prefix_tokens: int, use_mask_token: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_size = config.patch_size
        self.grid_size = config.image_size // config.patch_size
        self.num_channels = config.num_channels
        self.projection = keras.layers.Conv2D(hidden, config.patch_size, strides=config.patch_size, padding="valid", name="projection")
        self.projection.build((None, config.image_size, config.image_size, config.num_channels))
        self.cls_token = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="cls_token")
        self.mask_token = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="mask_token") if use_mask_token else None
        self.distillation_token = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="distillation_token") if num_prefix_tokens == 2 else None
        self.position_embeddings = self.add_weight(shape=(1, self.grid_size**2 + num_prefix_tokens, hidden), initializer="zeros", name="position_embeddings")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        tokens = [("cls_token", self.cls_token), ("mask_token", self.mask_token), ("distillation_token", self.distillation_token),
                  ("position_embeddings", self.position_embeddings)]
        return [TorchWeight(n, v, "plain") for n, v in tokens if v is not None] + conv_weights("patch_embeddings.projection", self.projection)

    def interpolated_position_embeddings(self, grid_height: int, grid_width: int) -> Any:
        """The position embeddings resampled to another patch grid, as the PyTorch model does."""
        native = self.grid_size
        if (grid_height, grid_width) == (native, native):
            return self.position_embeddings
        prefix = self.position_embeddings[:, : self.num_prefix_tokens]
        patches = ops.reshape(self.position_embeddings[:, self.num_prefix_tokens :], (native, native, -1))
        rows = ops.convert_to_tensor(bicubic_matrix(native, grid_height))
        cols = ops.convert_to_tensor(bicubic_matrix(native, grid_width))
        patches = ops.einsum("ih,jw,hwc->ijc", rows, cols, patches)
        return ops.concatenate([prefix, ops.reshape(patches, (1, grid_height * grid_width, -1))], axis=1)

    def call(self, pixel_values: Any, bool_masked_pos: Any = None, interpolate_pos_encoding: bool = False, training: bool = False) -> Any:
        height, width = pixel_values.shape[2], pixel_values.shape[3]
        patches = self.projection(ops.transpose(pixel_values, (0, 2, 3, 1)))  # (B, H/p, W/p, hidden)
        batch_size = ops.shape(patches)[0]
        embeddings = ops.reshape(patches, (batch_size, -1, patches.shape[-1]))

        if bool_masked_pos is not None:
            # Replace masked patches by the learned mask token (SimMIM).
            mask = ops.cast(ops.reshape(bool_masked_pos, (batch_size, -1, 1)), embeddings.dtype)
            embeddings = embeddings * (1.0 - mask) + self.mask_token * mask

        tokens = self.cls_token if self.distillation_token is None else ops.concatenate([self.cls_token, self.distillation_token], axis=1)
        tokens = ops.broadcast_to(tokens, (batch_size, self.num_prefix_tokens, embeddings.shape[-1]))
        embeddings = ops.concatenate([ops.cast(tokens, embeddings.dtype), embeddings], axis=1)
        if interpolate_pos_encoding:
            positions = self.interpolated_position_embeddings(height // self.patch_size, width // self.patch_size)
        else:
            positions = self.position_embeddings
        return self.dropout(embeddings + positions, training=training)


# ----------------------------------------------------------------------------- attention
class DeiTSelfAttention(DeiTKerasLayer):
    """Multi-head self-attention; the attention map is what the PyTorch eager path computes."""

    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.head_size = hidden // config.num_attention_heads
        self.scale = self.head_size**-0.5
        self.query = _dense(hidden, hidden, config.qkv_bias, "query")
        self.key = _dense(hidden, hidden, config.qkv_bias, "key")
        self.value = _dense(hidden, hidden, config.qkv_bias, "value")
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob)
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        return dense_weights("query", self.query) + dense_weights("key", self.key) + dense_weights("value", self.value)

    def _split_heads(self, x: Any) -> Any:
        # (B, N, hidden) -> (B, heads, N, head_size)
        return ops.transpose(ops.reshape(x, (ops.shape(x)[0], -1, self.num_attention_heads, self.head_size)), (0, 2, 1, 3))

    def call(self, hidden_states: Any, head_mask: Any = None, training: bool = False) -> tuple[Any, Any]:
        query = self._split_heads(self.query(hidden_states))
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * self.scale
        probs = ops.softmax(scores, axis=-1)
        probs = self.dropout(probs, training=training)
        if head_mask is not None:
            probs = probs * head_mask
        context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
        return ops.reshape(context, (ops.shape(context)[0], -1, self.num_attention_heads * self.head_size)), probs


class DropPath(keras.layers.Layer):
    """Stochastic depth: drop a residual branch for whole samples during training."""

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        # Unseeded: each layer draws its own masks (a fixed seed would give every layer the same ones).
        self.seed_generator = keras.random.SeedGenerator() if rate > 0 else None

    def call(self, x: Any, training: bool = False) -> Any:
        if self.seed_generator is None or not training:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.cast(keras.random.uniform(shape, seed=self.seed_generator) < keep, x.dtype)
        return x * mask / keep


# --------------------------------------------------------------------------------- layer
class DeiTLayer(DeiTKerasLayer):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: DeiTConfig, drop_path: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hidden, intermediate = config.hidden_size, config.intermediate_size
        self.attention = DeiTSelfAttention(config, name="attention")
        self.attention_output = _dense(hidden, hidden, name="attention_output")
        self.intermediate = _dense(intermediate, hidden, name="intermediate")
        self.intermediate_act_fn = activation(config.hidden_act)
        self.mlp_output = _dense(hidden, intermediate, name="mlp_output")
        self.layernorm_before = _layer_norm(config, "layernorm_before")
        self.layernorm_after = _layer_norm(config, "layernorm_after")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        return [
            *[w.prefixed("attention.attention") for w in self.attention.torch_weights()],
            *dense_weights("attention.output.dense", self.attention_output),
            *dense_weights("intermediate.dense", self.intermediate),
            *dense_weights("output.dense", self.mlp_output),
            *_norm_weights("layernorm_before", self.layernorm_before),
            *_norm_weights("layernorm_after", self.layernorm_after),
        ]

    def call(self, hidden_states: Any, head_mask: Any = None, training: bool = False) -> tuple[Any, Any]:
        context, probs = self.attention(self.layernorm_before(hidden_states), head_mask=head_mask, training=training)
        attention_output = self.dropout(self.attention_output(context), training=training)
        hidden_states = hidden_states + self.drop_path(attention_output, training=training)
        mlp = self.mlp_output(self.intermediate_act_fn(self.intermediate(self.layernorm_after(hidden_states))))
        return hidden_states + self.drop_path(self.dropout(mlp, training=training), training=training), probs


class DeiTEncoder(DeiTKerasLayer):
    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        depth = config.num_hidden_layers
        # Stochastic depth grows linearly with depth, as in the PyTorch model.
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layer = [DeiTLayer(config, rate, name=f"layer_{i}") for i, rate in enumerate(rates)]
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        return [w.prefixed(f"layer.{i}") for i, layer in enumerate(self.layer) for w in layer.torch_weights()]

    def call(self, hidden_states: Any, head_mask: Any = None, output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False) -> tuple[Any, tuple[Any, ...] | None, tuple[Any, ...] | None]:
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for i, layer in enumerate(self.layer):
            hidden_states, probs = layer(hidden_states, head_mask=None if head_mask is None else head_mask[i], training=training)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(probs)
        return (
            hidden_states,
            tuple(all_hidden) if all_hidden is not None else None,
            tuple(all_attentions) if all_attentions is not None else None,
        )


class DeiTPooler(DeiTKerasLayer):
    """Dense + activation on the first ([CLS]) token."""

    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dense = _dense(config.pooler_output_size, config.hidden_size, name="dense")
        self.activation = activation(config.pooler_act)
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        return dense_weights("dense", self.dense)

    def call(self, hidden_states: Any) -> Any:
        return self.activation(self.dense(hidden_states[:, 0]))


class DeiTMainLayer(DeiTKerasLayer):
    """Embeddings, encoder, final LayerNorm and optional pooler: the body every model shares."""

    def __init__(self, config: DeiTConfig, num_prefix_tokens: int, add_pooling_layer: bool = True, use_mask_token: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = DeiTEmbeddings(config, num_prefix_tokens, use_mask_token=use_mask_token, name="embeddings")
        self.encoder = DeiTEncoder(config, name="encoder")
        self.layernorm = _layer_norm(config, "layernorm")
        self.pooler = DeiTPooler(config, name="pooler") if add_pooling_layer else None
        self.built = True

    def torch_weights(self) -> list[TorchWeight]:
        weights = [w.prefixed("embeddings") for w in self.embeddings.torch_weights()]
        weights += [w.prefixed("encoder") for w in self.encoder.torch_weights()]
        weights += _norm_weights("layernorm", self.layernorm)
        if self.pooler is not None:
            weights += [w.prefixed("pooler") for w in self.pooler.torch_weights()]
        return weights

    def call(self, pixel_values: Any, bool_masked_pos: Any = None, head_mask: Any = None, output_attentions: bool = False,
             output_hidden_states: bool = False, interpolate_pos_encoding: bool = False,
             training: bool = False) -> tuple[Any, Any, tuple[Any, ...] | None, tuple[Any, ...] | None]:
        embedding_output = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding,
                                           training=training)
        hidden_states, all_hidden, all_attentions = self.encoder(
            embedding_output, head_mask=head_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            training=training,
        )
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled_output, all_hidden, all_attentions
