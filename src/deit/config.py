"""Model configuration, readable and writable as a Hugging Face ``config.json``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .model_rules import PROBLEM_TYPES, SUPPORTED_ACTIVATIONS

CONFIG_NAME = "config.json"

# Keys that the Hugging Face side writes for bookkeeping; we drop them when reading a file
# and do not pass them on when writing one of ours.
_HF_BOOKKEEPING = ("transformers_version", "_name_or_path", "_commit_hash", "_attn_implementation_autoset")

# Defaults of the fields every Hugging Face config has; a config file leaves them out at these values.
_GENERIC_DEFAULTS: dict[str, Any] = {"output_attentions": False, "output_hidden_states": False, "return_dict": True}
_DEFAULT_NUM_LABELS = 2
_DEFAULT_NUM_HEADS = 12


class DeiTConfig:
    """Configuration of a DeiT model (field names and defaults of ``transformers.DeiTConfig``).

    The defaults describe ``facebook/deit-base-distilled-patch16-224``. Extra keyword
    arguments are kept as attributes and written back, as the Hugging Face configs do.

    A config may be built in steps (``cfg = DeiTConfig(hidden_size=32); cfg.num_attention_heads = 4``):
    construction checks each field on its own, and the fields against each other only where the
    caller gave both (``num_attention_heads`` left out means 12, checked against ``hidden_size``
    later). The whole config is checked by :meth:`validate` when a model is built from it, when
    it is saved and when it is read from a file, naming the field at fault.

    ``output_attentions``, ``output_hidden_states`` and ``return_dict`` are the defaults the
    models' ``forward`` uses when the argument is None. ``dtype`` (``torch_dtype`` in older files)
    records the dtype of saved weights, as a ``torch.dtype``, like the reference.
    """

    model_type = "deit"
    is_encoder_decoder = False

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int | None = None,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        encoder_stride: int = 16,
        pooler_output_size: int | None = None,
        pooler_act: str = "tanh",
        drop_path_rate: float = 0.0,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        architectures: list[str] | None = None,
        attn_implementation: str | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = _DEFAULT_NUM_HEADS if num_attention_heads is None else num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.encoder_stride = encoder_stride
        self.pooler_output_size = pooler_output_size if pooler_output_size is not None else hidden_size
        self.pooler_act = pooler_act
        # Stochastic depth for training; 0.0 keeps released checkpoints' behaviour unchanged.
        self.drop_path_rate = drop_path_rate
        self.problem_type = problem_type
        self.architectures = architectures
        # Not serialised: a run-time choice, like in transformers.
        self.attn_implementation = attn_implementation or "sdpa"
        self.output_attentions = output_attentions
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        # The reference's older files say torch_dtype; dtype wins when both are there.
        legacy_dtype = kwargs.pop("torch_dtype", None)
        self.dtype = dtype if dtype is not None else legacy_dtype
        self._set_labels(num_labels, id2label, label2id)
        self._keep_extra_fields(kwargs)
        self._check_fields()
        if num_attention_heads is not None:
            self._check_heads_divide_width()
        self._check_image_fits_patches()

    def _set_labels(self, num_labels: int | None, id2label: dict[int, str] | None, label2id: dict[str, int] | None) -> None:
        """``id2label`` (keys made ints) and ``label2id``; ``num_labels`` alone names the labels LABEL_i."""
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"DeiTConfig: num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries")
        else:
            id2label = {i: f"LABEL_{i}" for i in range(_DEFAULT_NUM_LABELS if num_labels is None else num_labels)}
        self.id2label = id2label
        if label2id is None:
            label2id = {v: k for k, v in id2label.items()}
        self.label2id = {str(k): int(v) for k, v in label2id.items()}

    def _keep_extra_fields(self, fields: dict[str, Any]) -> None:
        """Fields we do not know become attributes written back to the file, as the reference keeps
        them; its bookkeeping keys and ``model_type`` (a class attribute here) are dropped."""
        for key in (*_HF_BOOKKEEPING, "model_type"):
            fields.pop(key, None)
        self._extra_keys = sorted(fields)
        for key, value in fields.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ labels
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if value != self.num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    # ---------------------------------------------------------------- dtype
    @property
    def dtype(self) -> Any:
        return self._dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        if isinstance(value, str) and value != "auto":
            import torch

            resolved = getattr(torch, value, None)
            if not isinstance(resolved, torch.dtype):
                raise ValueError(f"DeiTConfig.dtype: {value!r} is not a torch dtype name")
            value = resolved
        self._dtype = value

    @property
    def torch_dtype(self) -> Any:
        """The older name of :attr:`dtype`, still read and written by the reference."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot describe a model."""
        self._check_fields()
        self._check_heads_divide_width()
        self._check_image_fits_patches()

    def _fail(self, field: str, message: str) -> None:
        raise ValueError(f"DeiTConfig.{field}: {message}")

    def _check_heads_divide_width(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            self._fail("hidden_size", f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")

    def _check_image_fits_patches(self) -> None:
        if self.image_size % self.patch_size:
            self._fail("image_size", f"{self.image_size} is not divisible by patch_size={self.patch_size}")

    def _check_fields(self) -> None:
        """Each field on its own: types, ranges, known names."""
        fail = self._fail
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size", "num_channels", "encoder_stride", "pooler_output_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(field, f"must be an integer, got {value!r}")
            if value <= 0:
                fail(field, f"must be positive, got {value}")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                fail(field, f"must be a probability in [0, 1), got {value!r}")
        for field in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                fail(field, f"must be a positive number, got {value!r}")
        for field in ("hidden_act", "pooler_act"):
            value = getattr(self, field)
            if value not in SUPPORTED_ACTIVATIONS:
                fail(field, f"unknown activation {value!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
        for field in ("qkv_bias", "output_attentions", "output_hidden_states", "return_dict"):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"must be true or false, got {getattr(self, field)!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            fail("problem_type", f"unknown problem type {self.problem_type!r}; expected one of {PROBLEM_TYPES}")
        if self.attn_implementation not in ("sdpa", "eager"):
            fail("attn_implementation", f"must be 'sdpa' or 'eager', got {self.attn_implementation!r}")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            fail("id2label", "keys must be the label ids 0..num_labels-1")

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        if self.architectures:
            out["architectures"] = list(self.architectures)
        for key in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
            "image_size", "patch_size", "num_channels", "qkv_bias", "encoder_stride",
            "pooler_output_size", "pooler_act", "drop_path_rate", "problem_type",
        ):
            out[key] = getattr(self, key)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        for key, default in _GENERIC_DEFAULTS.items():
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        if self.dtype is not None:
            out["dtype"] = self.dtype if isinstance(self.dtype, str) else str(self.dtype).removeprefix("torch.")
        for key in self._extra_keys:
            out[key] = copy.deepcopy(getattr(self, key))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the generic fields at their defaults (no problem type, the
        default two labels), as the reference's ``to_diff_dict``: the model's own fields stay."""
        out = self.to_dict()
        if out["problem_type"] is None:
            del out["problem_type"]
        if self.id2label == {i: f"LABEL_{i}" for i in range(_DEFAULT_NUM_LABELS)}:
            del out["id2label"], out["label2id"]
        return out

    def to_json_string(self, use_diff: bool = False) -> str:
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write the config as JSON (only what differs from the defaults when ``use_diff``), atomically."""
        self.validate()
        atomic_write_text(json_file_path, self.to_json_string(use_diff=use_diff))

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "DeiTConfig":
        data = {**data, **overrides}
        model_type = data.get("model_type")
        if model_type is not None and model_type not in ("deit", "vit"):
            raise ValueError(f"config: model_type {model_type!r} is not a DeiT/ViT configuration")
        try:
            return cls(**data)
        except TypeError as err:  # e.g. a field of the wrong JSON type reaching a comparison
            raise ValueError(f"config: invalid field value ({err})") from None

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME, use_diff=False)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "DeiTConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            config = cls.from_dict(data, **overrides)
            config.validate()  # a file describes the whole model: hold every field against the others now
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return config

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, subfolder: str = "", **kwargs: Any) -> "DeiTConfig":
        """Read ``config.json`` from a folder, a file, or a Hub name (see :mod:`deit.hub`);
        ``subfolder``: where the file lies inside the folder or repository."""
        from .hub import resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "local_files_only", "token") if k in kwargs}
        filename = f"{subfolder.strip('/')}/{CONFIG_NAME}" if subfolder else CONFIG_NAME
        path = resolve_file(name_or_path, filename, **hub_kwargs)
        return cls.from_json_file(path, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DeiTConfig":
        """Configuration of a released checkpoint, e.g. ``"deit-small-distilled-patch16-224"``."""
        key = name.split("/")[-1]
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return config_from_dict({**PRESETS[key], **overrides})

    def copy(self) -> "DeiTConfig":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeiTConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class ViTConfig(DeiTConfig):
    """The plain-ViT configuration of the non-distilled DeiT checkpoints (model_type "vit")."""

    model_type = "vit"


_SIZES = {
    "tiny": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def _presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for size, dims in _SIZES.items():
        for distilled in (True, False):
            for image_size in (224, 384):
                if image_size == 384 and size != "base":
                    continue
                tag = "-distilled" if distilled else ""
                name = f"deit-{size}{tag}-patch16-{image_size}"
                presets[name] = dict(
                    dims, num_hidden_layers=12, patch_size=16, image_size=image_size,
                    model_type="deit" if distilled else "vit", num_labels=1000,
                )
    return presets


# The released ImageNet-1k checkpoints (facebook/<name> on the Hub).
PRESETS: dict[str, dict[str, Any]] = _presets()


def config_from_dict(data: dict[str, Any]) -> DeiTConfig:
    """Build the configuration class that ``data["model_type"]`` names (deit by default)."""
    cls = ViTConfig if data.get("model_type") == "vit" else DeiTConfig
    return cls.from_dict(data)
