"""The four DeiT models as Keras 3 models: the reference TF classes' names and call arguments,
the arithmetic of our PyTorch classes (:mod:`deit.modeling`), the PyTorch checkpoint layout.

``from_pretrained`` is :func:`deit.checkpoint.load_pretrained` itself (the same name resolution,
layout detection, timm / original-checkpoint mapping, config inference and position-embedding
resampling as the PyTorch classes): these classes offer the interface it loads into
(``state_dict`` / ``load_state_dict`` in PyTorch names and layouts). ``save_pretrained`` writes
``config.json`` + ``model.safetensors`` that the PyTorch classes and ``transformers`` read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from ..config import DeiTConfig
from ..model_rules import VIT_STAND_INS, check_masked_positions_shape, check_pixel_values_shape, head_mask_shapes
from .layers import DeiTMainLayer, conv_weights, dense_weights
from .losses import classification_loss, distillation_loss
from .outputs import (
    TFBaseModelOutputWithPooling,
    TFDeiTForImageClassificationWithTeacherOutput,
    TFImageClassifierOutput,
    TFMaskedImageModelingOutput,
)
from .weights import TorchWeight

WEIGHTS_NAME = "model.safetensors"


class TFDeiTPreTrainedModel(keras.Model):
    """Configuration, checks of the inputs, and the weights in PyTorch names."""

    main_input_name: ClassVar[str] = "pixel_values"

    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        if not isinstance(config, DeiTConfig):
            raise TypeError(f"{type(self).__name__} expects a DeiTConfig, got {type(config).__name__}")
        super().__init__(**kwargs)
        self.config = config

    @property
    def base_model_prefix(self) -> str:
        """"deit" (the distilled checkpoints) or "vit" (the non-distilled ones, plain ViTs)."""
        return self.config.model_type

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.config.model_type == "vit" else 2

    def _body(self, add_pooling_layer: bool, use_mask_token: bool = False) -> DeiTMainLayer:
        return DeiTMainLayer(self.config, self.num_prefix_tokens, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token,
                             name=self.base_model_prefix)

    # --------------------------------------------------------------- weights by PyTorch name
    def torch_weights(self) -> list[TorchWeight]:
        """Every variable under the name it has in the PyTorch class's ``state_dict``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights as the PyTorch class's ``state_dict`` holds them (names, shapes, layouts)."""
        return {w.name: w.torch_value() for w in self.torch_weights()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> dict[str, list[str]]:
        """Assign PyTorch-layout arrays (numpy or torch) to the variables of the same name."""
        weights = {w.name: w for w in self.torch_weights()}
        missing = [k for k in weights if k not in state_dict]
        unexpected = [k for k in state_dict if k not in weights]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}: missing weights {missing}, unexpected weights {unexpected}")
        for name, value in state_dict.items():
            if name in weights:
                weights[name].assign_torch_value(value)
        return {"missing": missing, "unexpected": unexpected}

    @classmethod
    def init_arguments(cls) -> frozenset[str]:
        """Constructor keywords ``load_pretrained`` passes on (none: every setting is a config field)."""
        return frozenset()

    @classmethod
    def class_for_config(cls, config: DeiTConfig) -> type["TFDeiTPreTrainedModel"]:
        """The class that loads a checkpoint with ``config`` (asked by ``load_pretrained``): this one,
        which serves both model types, unless it needs the [DIST] token that a plain ViT lacks
        (:data:`deit.model_rules.VIT_STAND_INS`)."""
        stand_in = VIT_STAND_INS.get(cls.__name__.removeprefix("TF")) if config.model_type == "vit" else None
        if stand_in is not None:
            raise ValueError(f"{cls.__name__} needs a distilled (model_type 'deit') checkpoint; this one is a plain ViT: "
                             f"load it with TF{stand_in.replace('ViT', 'DeiT', 1)}")
        return cls

    def eval(self) -> "TFDeiTPreTrainedModel":
        """No-op (``load_pretrained`` puts the PyTorch models it builds in eval mode; Keras models
        are in inference mode unless called with ``training=True``)."""
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "TFDeiTPreTrainedModel":
        """Load any checkpoint the PyTorch classes load: a folder, a weights file (safetensors,
        timm, original ``.pth``) or a Hub name. Keyword arguments as in the PyTorch classes
        (``config``, ``ignore_mismatched_sizes``, ``cache_dir``, ``revision``, ``local_files_only``,
        ``token``, config overrides such as ``num_labels=10``); the weights stay float32.
        """
        for key in ("torch_dtype", "dtype", "device"):
            if kwargs.get(key) is not None:
                raise ValueError(f"{cls.__name__}.from_pretrained: {key}= is not supported (the Keras models hold float32 weights)")
        kwargs.pop("from_pt", None)  # the reference's flag: every checkpoint here is a PyTorch one
        from ..checkpoint import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` in the PyTorch Hugging Face layout."""
        from safetensors.numpy import save_file

        from ..atomic import atomic_path

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.copy()
        config.architectures = [type(self).__name__.removeprefix("TF")]
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(self.state_dict(), str(tmp), metadata={"format": "pt"})
        config.save_pretrained(directory)

    def export_saved_model(self, path: str | os.PathLike) -> Path:
        """A TensorFlow SavedModel with a dynamic-batch serving signature (see :mod:`deit.keras.saved_model`)."""
        from .saved_model import export_saved_model

        return export_saved_model(self, path)

    # ------------------------------------------------------------------------- input checks
    def _check_inputs(self, pixel_values: Any, bool_masked_pos: Any, interpolate_pos_encoding: bool) -> None:
        """Raise a clear ValueError for inputs the model cannot read correctly (the rules and messages
        of the PyTorch model: :mod:`deit.model_rules`)."""
        check_pixel_values_shape(self.config, tuple(pixel_values.shape), interpolate_pos_encoding)
        if bool_masked_pos is not None:
            check_masked_positions_shape(self.config, tuple(pixel_values.shape), tuple(bool_masked_pos.shape),
                                         has_mask_token=self.backbone.embeddings.mask_token is not None)

    def _expand_head_mask(self, head_mask: Any) -> Any:
        """Turn a [heads] or [layers, heads] mask into [layers, 1, heads, 1, 1] (:func:`deit.model_rules.head_mask_shapes`)."""
        if head_mask is None:
            return None
        head_mask = ops.cast(ops.convert_to_tensor(head_mask), "float32")
        full, per_layer = head_mask_shapes(self.config, tuple(head_mask.shape))
        return ops.reshape(ops.broadcast_to(head_mask, full), per_layer)

    @property
    def backbone(self) -> DeiTMainLayer:
        return self.deit

    def _run_body(self, pixel_values: Any, bool_masked_pos: Any = None, head_mask: Any = None, output_attentions: bool | None = None,
                  output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                  training: bool = False) -> TFBaseModelOutputWithPooling:
        pixel_values = ops.cast(ops.convert_to_tensor(pixel_values), "float32")
        self._check_inputs(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        sequence, pooled, hidden, attentions = self.deit(
            pixel_values, bool_masked_pos=bool_masked_pos, head_mask=self._expand_head_mask(head_mask),
            output_attentions=bool(output_attentions), output_hidden_states=bool(output_hidden_states),
            interpolate_pos_encoding=interpolate_pos_encoding, training=training,
        )
        return TFBaseModelOutputWithPooling(sequence, pooled, hidden, attentions)


def _finish(output: Any, return_dict: bool | None) -> Any:
    return output if return_dict is not False else output.to_tuple()


class TFDeiTModel(TFDeiTPreTrainedModel):
    """The bare encoder: embeddings, transformer layers, final LayerNorm, optional pooler."""

    def __init__(self, config: DeiTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.deit = self._body(add_pooling_layer, use_mask_token)
        self.built = True  # every variable exists from construction (the shapes follow from the config)

    @property
    def pooler(self) -> Any:
        return self.deit.pooler

    def torch_weights(self) -> list[TorchWeight]:
        return self.deit.torch_weights()  # the PyTorch DeiTModel's names carry no prefix

    def call(
        self,
        pixel_values: Any,
        bool_masked_pos: Any = None,
        head_mask: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        training: bool = False,
    ) -> TFBaseModelOutputWithPooling | tuple[Any, ...]:
        body = self._run_body(pixel_values, bool_masked_pos, head_mask, output_attentions, output_hidden_states,
                              interpolate_pos_encoding, training)
        return _finish(body, return_dict)


class _TFHeadModel(TFDeiTPreTrainedModel):
    """A head on the shared body; the body's PyTorch names are under ``base_model_prefix``."""

    def __init__(self, config: DeiTConfig, use_mask_token: bool = False, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.deit = self._body(add_pooling_layer=False, use_mask_token=use_mask_token)

    def _linear_head(self, name: str) -> keras.layers.Dense | None:
        """A linear classifier, or None (the identity) for ``num_labels=0``, as in the PyTorch class."""
        if self.config.num_labels == 0:
            return None
        layer = keras.layers.Dense(self.config.num_labels, name=name)
        layer.build((None, self.config.hidden_size))
        return layer

    def head_weights(self) -> list[TorchWeight]:
        raise NotImplementedError

    def torch_weights(self) -> list[TorchWeight]:
        return [w.prefixed(self.base_model_prefix) for w in self.deit.torch_weights()] + self.head_weights()


class _TFClassifier(_TFHeadModel):
    """A head model that ``fit()`` trains on labels."""

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True) -> Any:
        """The loss ``fit()`` trains: the one ``call(labels=...)`` returns, with ``y`` as the labels."""
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__}.fit: sample weights are not supported")
        return self.loss_from_outputs(y_pred, y)

    def loss_from_outputs(self, outputs: Any, labels: Any) -> Any:
        raise NotImplementedError


def _apply(head: keras.layers.Dense | None, features: Any) -> Any:
    return features if head is None else head(features)


def _head_weights(name: str, head: keras.layers.Dense | None) -> list[TorchWeight]:
    return [] if head is None else dense_weights(name, head)


class TFDeiTForImageClassification(_TFClassifier):
    """A linear classifier on the final [CLS] token (the [DIST] token is not used)."""

    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.classifier = self._linear_head("classifier")
        self.built = True  # every variable exists from construction (the shapes follow from the config)

    def head_weights(self) -> list[TorchWeight]:
        return _head_weights("classifier", self.classifier)

    def loss_from_outputs(self, outputs: TFImageClassifierOutput, labels: Any) -> Any:
        return classification_loss(self.config, outputs.logits, labels)

    def call(
        self,
        pixel_values: Any,
        head_mask: Any = None,
        labels: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        training: bool = False,
    ) -> TFImageClassifierOutput | tuple[Any, ...]:
        body = self._run_body(pixel_values, None, head_mask, output_attentions, output_hidden_states, interpolate_pos_encoding, training)
        output = TFImageClassifierOutput(None, _apply(self.classifier, body.last_hidden_state[:, 0]), body.hidden_states, body.attentions)
        if labels is not None:
            output.loss = self.loss_from_outputs(output, labels)
        return _finish(output, return_dict)


class TFDeiTForImageClassificationWithTeacher(_TFClassifier):
    """Two linear heads, on the [CLS] and on the [DIST] token; the prediction is their mean.

    It trains as the PyTorch class does: with ``labels`` the loss is the mean of the two heads'
    losses; with ``labels`` and ``teacher_logits`` it is the DeiT distillation loss
    (``distillation_type`` "hard", "soft" or "none", ``distillation_alpha``, ``distillation_tau``;
    their defaults for ``fit()`` are set at construction). In ``fit()``, ``y`` is the labels, or
    ``{"labels": ..., "teacher_logits": ...}``.
    """

    def __init__(self, config: DeiTConfig, distillation_type: str = "hard", distillation_alpha: float = 0.5,
                 distillation_tau: float = 1.0, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cls_classifier = self._linear_head("cls_classifier")
        self.distillation_classifier = self._linear_head("distillation_classifier")
        self.distillation = dict(distillation_type=distillation_type, alpha=distillation_alpha, tau=distillation_tau)
        self.built = True  # every variable exists from construction (the shapes follow from the config)

    def head_weights(self) -> list[TorchWeight]:
        return _head_weights("cls_classifier", self.cls_classifier) + _head_weights("distillation_classifier", self.distillation_classifier)

    def loss_from_outputs(self, outputs: TFDeiTForImageClassificationWithTeacherOutput, labels: Any, teacher_logits: Any = None,
                          **distillation: Any) -> Any:
        if isinstance(labels, dict):
            labels, teacher_logits = labels["labels"], labels.get("teacher_logits")
        if teacher_logits is not None:
            return distillation_loss(outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits,
                                     **{**self.distillation, **distillation})
        return (classification_loss(self.config, outputs.cls_logits, labels)
                + classification_loss(self.config, outputs.distillation_logits, labels)) / 2

    def call(
        self,
        pixel_values: Any,
        head_mask: Any = None,
        labels: Any = None,
        teacher_logits: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        distillation_type: str | None = None,
        distillation_alpha: float | None = None,
        distillation_tau: float | None = None,
        training: bool = False,
    ) -> TFDeiTForImageClassificationWithTeacherOutput | tuple[Any, ...]:
        if teacher_logits is not None and labels is None:
            raise ValueError("teacher_logits were given without labels; the distillation loss needs both")
        body = self._run_body(pixel_values, None, head_mask, output_attentions, output_hidden_states, interpolate_pos_encoding, training)
        sequence = body.last_hidden_state
        cls_logits = _apply(self.cls_classifier, sequence[:, 0])
        distillation_logits = _apply(self.distillation_classifier, sequence[:, 1])
        output = TFDeiTForImageClassificationWithTeacherOutput(
            None, (cls_logits + distillation_logits) / 2, cls_logits, distillation_logits, body.hidden_states, body.attentions
        )
        if labels is not None:
            overrides = {k: v for k, v in (("distillation_type", distillation_type), ("alpha", distillation_alpha),
                                           ("tau", distillation_tau)) if v is not None}
            output.loss = self.loss_from_outputs(output, labels, teacher_logits, **overrides)
        return _finish(output, return_dict)


class TFDeiTForMaskedImageModeling(_TFHeadModel):
    """SimMIM: masked patches are replaced by a mask token and the pixels are reconstructed by a
    1x1 convolution + pixel shuffle; the loss is the L1 error on the masked pixels, averaged over
    the masked pixels of the whole batch (as the PyTorch class). The patch tokens (after the
    prefix tokens) form the feature map, as in transformers 5.x."""

    def __init__(self, config: DeiTConfig, **kwargs: Any) -> None:
        super().__init__(config, use_mask_token=True, **kwargs)
        self.decoder = keras.layers.Conv2D(config.encoder_stride**2 * config.num_channels, 1, name="decoder")
        self.decoder.build((None, None, None, config.hidden_size))
        self.built = True  # every variable exists from construction (the shapes follow from the config)

    def head_weights(self) -> list[TorchWeight]:
        return conv_weights("decoder.0", self.decoder)

    def _masked_l1(self, pixel_values: Any, reconstruction: Any, bool_masked_pos: Any) -> Any:
        patch, channels = self.config.patch_size, self.config.num_channels
        grid_h, grid_w = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        mask = ops.cast(ops.reshape(bool_masked_pos, (-1, grid_h, grid_w)), reconstruction.dtype)
        mask = ops.repeat(ops.repeat(mask, patch, axis=1), patch, axis=2)[:, None]
        target = pixel_values[:, :, : grid_h * patch, : grid_w * patch]
        l1 = ops.abs(target - reconstruction)
        return ops.sum(l1 * mask) / (ops.sum(mask) + 1e-5) / channels

    def call(
        self,
        pixel_values: Any,
        bool_masked_pos: Any = None,
        head_mask: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
        training: bool = False,
    ) -> TFMaskedImageModelingOutput | tuple[Any, ...]:
        pixel_values = ops.cast(ops.convert_to_tensor(pixel_values), "float32")
        body = self._run_body(pixel_values, bool_masked_pos, head_mask, output_attentions, output_hidden_states,
                              interpolate_pos_encoding, training)
        patch, stride, channels = self.config.patch_size, self.config.encoder_stride, self.config.num_channels
        grid_h, grid_w = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        tokens = body.last_hidden_state[:, self.num_prefix_tokens :]
        batch_size = ops.shape(tokens)[0]
        features = self.decoder(ops.reshape(tokens, (batch_size, grid_h, grid_w, tokens.shape[-1])))
        # Pixel shuffle: channel c * s * s + i * s + j of patch (h, w) is pixel (h * s + i, w * s + j) of channel c.
        features = ops.reshape(features, (batch_size, grid_h, grid_w, channels, stride, stride))
        reconstruction = ops.reshape(ops.transpose(features, (0, 3, 1, 4, 2, 5)), (batch_size, channels, grid_h * stride, grid_w * stride))
        loss = None if bool_masked_pos is None else self._masked_l1(pixel_values, reconstruction, bool_masked_pos)
        return _finish(TFMaskedImageModelingOutput(loss, reconstruction, body.hidden_states, body.attentions), return_dict)
