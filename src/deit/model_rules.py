"""The model's rules that do not depend on the framework, written once for PyTorch and Keras.

Which function each activation name means, which pixel values and head masks a model takes (and
the messages when it does not), which loss ``problem_type`` chooses, which class loads a
checkpoint of a model type, which heads and outputs each kind of model class has. The PyTorch
models (:mod:`deit.modeling`, :mod:`deit.optimize`, :mod:`deit.auto`) and the Keras models
(:mod:`deit.keras`) apply these rules with their own tensors; this module imports neither
framework (nor numpy), so that the Keras side never imports PyTorch to know them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


class ModelConfig(Protocol):
    """The fields of a :class:`deit.config.DeiTConfig` that these rules read (the config module
    itself reads this one for its names, so the rules do not import it)."""

    image_size: int
    patch_size: int
    num_channels: int
    num_hidden_layers: int
    num_attention_heads: int
    problem_type: str | None

    @property
    def num_labels(self) -> int: ...


# --------------------------------------------------------------------------- activations
# Every activation name a config may give -> the function it names. Several names are aliases
# of one function; each backend implements the functions (the values), not the names.
ACTIVATION_FUNCTIONS: dict[str, str] = {
    "gelu": "gelu",  # the exact (erf) GELU
    "gelu_new": "gelu_pytorch_tanh",
    "gelu_pytorch_tanh": "gelu_pytorch_tanh",  # the tanh approximation of GELU
    "gelu_fast": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",  # x * sigmoid(1.702 x)
    "relu": "relu",
    "selu": "selu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
SUPPORTED_ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS)


def activation_function(name: str) -> str:
    """The function (a value of :data:`ACTIVATION_FUNCTIONS`) that the activation ``name`` means."""
    if name not in ACTIVATION_FUNCTIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    return ACTIVATION_FUNCTIONS[name]


# ------------------------------------------------------------------------------- inputs
def check_pixel_values_shape(config: ModelConfig, shape: tuple[Any, ...], interpolate_pos_encoding: bool) -> None:
    """Raise a ValueError for pixel values of ``shape`` that a model of ``config`` cannot read correctly."""
    if len(shape) != 4:
        raise ValueError(f"pixel_values must have shape (batch, channels, height, width), got {shape}")
    _, channels, height, width = shape
    size, patch = config.image_size, config.patch_size
    if channels != config.num_channels:
        raise ValueError(f"pixel_values has {channels} channels but the model expects num_channels={config.num_channels}")
    if not interpolate_pos_encoding and (height, width) != (size, size):
        raise ValueError(
            f"Input image size ({height}*{width}) doesn't match the model ({size}*{size}); "
            "resize the input or pass interpolate_pos_encoding=True"
        )
    if interpolate_pos_encoding and (height < patch or width < patch):
        raise ValueError(f"Input image size ({height}*{width}) is smaller than one patch ({patch}*{patch})")


def check_masked_positions_shape(config: ModelConfig, pixel_shape: tuple[Any, ...], mask_shape: tuple[Any, ...],
                                 has_mask_token: bool) -> None:
    """Raise a ValueError for a ``bool_masked_pos`` of ``mask_shape`` that does not mark the patches of
    pixel values of ``pixel_shape`` (a batch size of None, a symbolic one, fits any)."""
    if not has_mask_token:
        raise ValueError("bool_masked_pos was given but this model has no mask token (build it with use_mask_token=True)")
    batch, _, height, width = pixel_shape
    grid = (height // config.patch_size) * (width // config.patch_size)
    if not mask_shape or mask_shape[0] not in (None, batch) or math.prod(mask_shape[1:]) != grid:
        raise ValueError(
            f"bool_masked_pos must have shape (batch, num_patches) = ({batch}, {grid}) for a {height}*{width} input, "
            f"got {tuple(mask_shape)}"
        )


def head_mask_shapes(config: ModelConfig, shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, ...]]:
    """How a head mask of ``shape`` is applied: ``(heads,)`` (every layer alike) or ``(layers,
    heads)`` is broadcast to the first shape returned, then reshaped to the second,
    ``(layers, 1, heads, 1, 1)``, which multiplies each layer's attention probabilities
    (1 keeps a head, 0 removes it). Any other shape is a ValueError."""
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    if tuple(shape) not in ((heads,), (layers, heads)):
        raise ValueError(f"head_mask must have shape ({heads},) or ({layers}, {heads}), got {tuple(shape)}")
    return (layers, heads), (layers, 1, heads, 1, 1)


# --------------------------------------------------------------------------------- losses
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
DISTILLATION_TYPES = ("none", "soft", "hard")


def problem_type_for(config: ModelConfig, labels_are_integers: bool) -> str:
    """The loss ``config.problem_type`` asks for, or, when it is None, the one the labels imply, as
    the reference infers it: one output is a regression (MSE), integer labels are single-label
    classification (cross-entropy), anything else multi-label (binary cross-entropy)."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels_are_integers else "multi_label_classification"


def check_distillation_settings(distillation_type: str, alpha: float, tau: float) -> None:
    """Raise a ValueError for settings the DeiT distillation loss cannot take."""
    if distillation_type not in DISTILLATION_TYPES:
        raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")


# ---------------------------------------------------------------------------- model classes
MODEL_TYPES = ("deit", "vit")
_MODEL_TYPE_PREFIXES = {"deit": "DeiT", "vit": "ViT"}


@dataclass(frozen=True)
class ModelKind:
    """What a kind of model class is, whatever its framework and model type."""

    task: str  # the task the auto classes load it for
    heads: tuple[str, ...]  # its linear classifiers, in the order of the tokens they read ([CLS], [DIST])
    outputs: tuple[str, ...]  # its main output tensors
    head_outputs: tuple[str, ...] = ()  # each head's own output where ``outputs`` combines them


# Model classes by name after the model type ("DeiT" / "ViT") and the framework ("TF") prefixes.
MODEL_KINDS: dict[str, ModelKind] = {
    "Model": ModelKind("base", (), ("last_hidden_state", "pooler_output")),
    "ForImageClassification": ModelKind("image-classification", ("classifier",), ("logits",)),
    "ForImageClassificationWithTeacher": ModelKind("image-classification", ("cls_classifier", "distillation_classifier"), ("logits",),
                                                   ("cls_logits", "distillation_logits")),
    "ForMaskedImageModeling": ModelKind("masked-image-modeling", (), ("reconstruction",)),
}
# The class each task loads for a distilled ("deit") and a plain ("vit") checkpoint.
TASK_CLASS_NAMES: dict[str, dict[str, str]] = {
    "base": {"deit": "DeiTModel", "vit": "ViTModel"},
    "image-classification": {"deit": "DeiTForImageClassificationWithTeacher", "vit": "ViTForImageClassification"},
    "masked-image-modeling": {"deit": "DeiTForMaskedImageModeling", "vit": "ViTForMaskedImageModeling"},
}
# Every model class of each framework (the Keras ones with "TF" in front), by its Hugging Face name.
MODEL_CLASS_NAMES = (
    "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTForMaskedImageModeling",
    "ViTModel", "ViTForImageClassification", "ViTForMaskedImageModeling",
)
# A plain ViT has no [DIST] token: the class that needs one, and the class that loads a ViT checkpoint instead.
VIT_STAND_INS = {"DeiTForImageClassificationWithTeacher": "ViTForImageClassification"}


def _kind_name(class_name: str) -> str | None:
    """``class_name`` without its prefixes ("TFDeiTForImageClassification" -> "ForImageClassification"), or None."""
    for prefix in ("DeiT", "ViT"):
        rest = class_name.removeprefix("TF")
        if rest.startswith(prefix) and rest[len(prefix):] in MODEL_KINDS:
            return rest[len(prefix):]
    return None


def model_kind_of_name(class_name: str) -> ModelKind:
    """The kind of the model class named ``class_name``."""
    name = _kind_name(class_name)
    if name is None:
        raise ValueError(f"{class_name} is not one of the DeiT/ViT model classes")
    return MODEL_KINDS[name]


def model_kind(model: Any) -> ModelKind:
    """The kind of a model (an instance or a class, PyTorch or Keras): that of the first class in its
    method resolution order named like one of ours, so that a user's subclass is its base's kind."""
    cls = model if isinstance(model, type) else type(model)
    for base in cls.__mro__:
        name = _kind_name(base.__name__)
        if name is not None:
            return MODEL_KINDS[name]
    raise ValueError(f"{cls.__name__} is not one of the DeiT/ViT model classes")


def output_names(model: Any) -> list[str]:
    """The model's main output tensors (``logits`` for any classifier); a body built without its
    pooler has no ``pooler_output``."""
    outputs = model_kind(model).outputs
    return [name for name in outputs if name != "pooler_output" or getattr(model, "pooler", None) is not None]


def exported_names(model: Any) -> list[str]:
    """Every tensor an exported graph (ONNX, ``torch.export``, a Keras SavedModel) returns, in
    order: :func:`output_names`, then each head's own output (the distilled classifier's
    ``cls_logits`` and ``distillation_logits`` after ``logits``, their mean)."""
    return output_names(model) + list(model_kind(model).head_outputs)


def class_name_for_config(class_name: str, model_type: str) -> str:
    """The class that loads a checkpoint of ``model_type`` when ``class_name`` is asked for: its twin
    of that model type ("DeiTModel" <-> "ViTModel"); for a plain ViT checkpoint, the stand-in
    (:data:`VIT_STAND_INS`) of a class that needs the [DIST] token."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if model_type == "vit" and class_name in VIT_STAND_INS:
        return VIT_STAND_INS[class_name]
    own = _MODEL_TYPE_PREFIXES[model_type]
    other = next(prefix for prefix in _MODEL_TYPE_PREFIXES.values() if prefix != own)
    return class_name.replace(other, own, 1)


def class_name_for_task(model_type: str, task: str | None, architectures: list[str] | None) -> str:
    """The class an auto class loads a checkpoint into: the one it was saved from (its config's
    ``architectures``) when that is one of ours and serves ``task`` (None: any task), else the
    task's class for the model type (``task=None``: image classification)."""
    if architectures:
        name = architectures[0]
        if name in MODEL_CLASS_NAMES and (task is None or model_kind_of_name(name).task == task):
            return name
    return TASK_CLASS_NAMES[task or "image-classification"][model_type]
