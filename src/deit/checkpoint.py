"""Reading and writing checkpoints safely.

safetensors first; pickle files (``.bin`` / ``.pth``) only through ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers, so no code in a file ever runs.
Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from . import initialisation, layouts
from .config import CONFIG_NAME, DeiTConfig, ViTConfig, config_from_dict
from .dtypes import to_dtype
from .errors import CheckpointError
from .hub import resolve_file, resolve_weights
from .atomic import atomic_path, atomic_write_text
from .layouts import timm_model_kwargs, timm_model_name, to_timm_layout

logger = logging.getLogger("deit")


class ModelFactory(Protocol):
    """What :func:`load_pretrained` asks of the class it is called for (a model class or an auto class)."""

    __name__: str

    def init_arguments(self) -> frozenset[str]: ...

    def class_for_config(self, config: DeiTConfig) -> type["LoadableModel"]: ...


class LoadableModel(Protocol):
    """A model this module loads into and writes: the PyTorch classes (:mod:`deit.modeling`) and the
    Keras ones (:mod:`deit.keras`) alike. Named here so that the file layer imports no model module."""

    config: DeiTConfig
    base_model_prefix: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Any: ...

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


# ---------------------------------------------------------------------------- reading
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {err}") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        # weights_only=True: the unpickler only rebuilds tensors and plain containers and refuses
        # any other global, so a payload in the file is never imported or called.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message opens with advice to retry with weights_only=False; keep only the line
        # that names what the file tried to load (e.g. "... GLOBAL posix.system ...").
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        detail = lines[0].strip() if lines else str(err).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: the file contains objects other than tensors (it could run code). "
            f"Only plain weight files are accepted; convert it on a machine that trusts it. Detail: {detail}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file (truncated or corrupt?): {err}") from None
    return obj


def unwrap_state_dict(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, looking inside the usual wrappers (``{"model": ...}``, ...)."""
    for key in ("model", "state_dict", "model_ema", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the file holds no tensors")
    # DistributedDataParallel wraps names in "module."
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | os.PathLike, resolve_sibling: Callable[[str], Path] | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a weights file: safetensors, a sharded index, or a pickle (safely)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    name = path.name
    if name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shard_names = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: not a valid shard index ({err})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shard_names:
            shard_path = resolve_sibling(shard) if resolve_sibling else path.parent / shard
            state.update(read_state_dict(shard_path))
        return state
    with path.open("rb") as fh:
        head = fh.read(8)
    if name.endswith(".safetensors") or (len(head) == 8 and not head.startswith(b"PK") and not head.startswith(b"\x80")):
        return _read_safetensors(path)
    return unwrap_state_dict(_read_pickle(path), path)


def read_config_file(path: str | os.PathLike) -> DeiTConfig:
    """A ``config.json`` as the class its ``model_type`` names: ViTConfig for "vit", else DeiTConfig."""
    try:
        model_type = json.loads(Path(path).read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        model_type = None  # DeiTConfig.from_json_file reports what is wrong with the file
    return (ViTConfig if model_type == "vit" else DeiTConfig).from_json_file(path)


# ------------------------------------------------------------------ fitting to a model
def _adapt_prefix(model: "LoadableModel", state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load a bare-body checkpoint into a head model and a head checkpoint into the bare body."""
    prefix = model.base_model_prefix + "."
    expected = model.state_dict().keys()
    model_has_prefix = any(k.startswith(prefix) for k in expected)
    ckpt_has_prefix = any(k.startswith(prefix) for k in state_dict)
    if model_has_prefix and not ckpt_has_prefix:
        return {prefix + k: v for k, v in state_dict.items()}
    if not model_has_prefix and ckpt_has_prefix:
        # The heads of the checkpoint have no place in the bare body: drop them quietly.
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


class WeightShapeError(CheckpointError, RuntimeError):
    """A checkpoint tensor whose shape does not fit the model: a ValueError like our other
    checkpoint errors, and the RuntimeError that callers of the reference catch."""


def load_state_dict_into(
    model: "LoadableModel",
    state_dict: dict[str, torch.Tensor],
    *,
    ignore_mismatched_sizes: bool = False,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Copy ``state_dict`` into ``model`` and report what did not fit.

    A shape mismatch is a :class:`WeightShapeError` naming the key and both shapes, unless
    ``ignore_mismatched_sizes`` (then the model keeps its fresh initialisation for that key).
    Returns the reference's loading info: ``missing_keys`` and ``unexpected_keys`` (sets of
    names), ``mismatched_keys`` (a set of ``(name, checkpoint shape, model shape)``) and
    ``error_msgs`` (a list, empty: every problem is raised or warned about).
    """
    own = model.state_dict()
    original, prefix = state_dict.keys(), model.base_model_prefix + "."

    def name_in_file(key: str) -> str:
        """The file's name of a key of the prefix-adapted state dict (the reference reports those)."""
        if key in original:
            return key
        return key[len(prefix):] if key.startswith(prefix) else prefix + key

    adapted = _adapt_prefix(model, state_dict)
    # Nothing recognised either way: report the keys as the file names them.
    state_dict = adapted if adapted.keys() & own.keys() else state_dict
    mismatched = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if mismatched and not ignore_mismatched_sizes:
        details = "; ".join(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched)
        raise WeightShapeError(
            f"{source}: {len(mismatched)} tensor(s) do not fit {type(model).__name__}: {details}. "
            "Pass ignore_mismatched_sizes=True to re-initialise them (e.g. a classifier for a new label set)."
        )
    loadable = {k: v for k, v in state_dict.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in loadable and k not in mismatched]
    unexpected = [k for k in state_dict if k not in own]
    unexpected_in_file = [name_in_file(k) for k in unexpected]
    # A pooler in the checkpoint is expected to go unused by the heads (they are built without one).
    quiet = [k for k in unexpected if k.startswith("pooler.") or ".pooler." in k]
    if quiet:
        logger.info("%s: unused pooler weights in %s: %s", type(model).__name__, source, ", ".join(quiet))
    model.load_state_dict(loadable, strict=False)
    name = type(model).__name__
    if not loadable and not mismatched:
        warnings.warn(f"{name}: no weight in {source} has a name the model knows; the model is freshly initialised", stacklevel=3)
    if missing:
        warnings.warn(f"{name}: weights not found in {source} and newly initialised: {', '.join(missing)}", stacklevel=3)
    if mismatched:
        warnings.warn(f"{name}: weights of another shape in {source} were re-initialised: {', '.join(mismatched)}", stacklevel=3)
    loud = [in_file for k, in_file in zip(unexpected, unexpected_in_file) if k not in quiet]
    if loud:
        warnings.warn(f"{name}: weights in {source} that the model does not use were ignored: {', '.join(loud)}", stacklevel=3)
    return {
        "missing_keys": set(missing),
        "unexpected_keys": set(unexpected_in_file),
        "mismatched_keys": {(k, state_dict[k].shape, own[k].shape) for k in mismatched},
        "error_msgs": [],
    }


def _resolve_dtype(torch_dtype: str | torch.dtype | None) -> torch.dtype | None:
    if torch_dtype is None or torch_dtype == "auto":
        return None
    return to_dtype(torch_dtype, "torch_dtype")


def _config_beside_weights(name_or_path: str | os.PathLike | None, source: Path | None, hub_kwargs: dict[str, Any],
                           state_dict: dict[str, torch.Tensor], weights_path: Path | str, layout_known: bool,
                           inferred: dict[str, Any] | None) -> DeiTConfig:
    """The config of weights loaded without one: the ``config.json`` beside them (in their folder or
    Hub repository), or the one inferred from timm / original weights (``inferred``). A
    ``config.json`` beside timm weights may be timm's own file (no model dimensions): the inferred
    config wins over such a file."""
    config_path = None
    if source is not None:
        config_dir = source if source.is_dir() or not source.exists() else source.parent
        config_path = resolve_file(config_dir if source.exists() else name_or_path, CONFIG_NAME, required=False, **hub_kwargs)
    from_folder = source is not None and (source.is_dir() or not source.exists())
    if config_path is not None and not layout_known and layouts.is_model_config_file(config_path):
        return read_config_file(config_path)  # weights of unknown names: loaded as all missing, with a warning
    if config_path is not None and layout_known and (inferred is None or (from_folder and layouts.is_model_config_file(config_path))):
        return read_config_file(config_path)
    if inferred is not None:
        return config_from_dict(inferred)
    if not layout_known:
        layouts.to_hf_layout(state_dict, source=weights_path)  # raises, naming the keys it does not know
    raise CheckpointError(f"{name_or_path}: no {CONFIG_NAME} beside the weights, and the weights alone do not describe the model")


def _with_overrides(config: DeiTConfig, overrides: dict[str, Any]) -> DeiTConfig:
    """``config`` with the fields ``overrides`` sets; ``num_labels`` alone renames the labels LABEL_i."""
    data = config.to_dict()
    if "num_labels" in overrides and "id2label" not in overrides:
        data.pop("id2label", None)
        data.pop("label2id", None)
    return config_from_dict({**data, **overrides})


def load_pretrained(
    cls: ModelFactory,
    name_or_path: str | os.PathLike | None,
    *,
    config: DeiTConfig | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    ignore_mismatched_sizes: bool = False,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    output_loading_info: bool = False,
    **kwargs: Any,
) -> Any:
    if torch.empty(0).device.type == "meta":
        raise RuntimeError(
            f"{cls.__name__}.from_pretrained was called under torch.device('meta') (or torch.set_default_device('meta')): "
            "weights cannot be loaded into meta tensors. Build an empty model there with from_config(config) or "
            "the class itself, or load outside the meta context."
        )
    # Keywords of a model constructor (use_mask_token, add_pooling_layer) reach it; the rest are config fields.
    init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.init_arguments()}
    config_overrides = kwargs
    hub_kwargs = dict(cache_dir=cache_dir, revision=revision, local_files_only=local_files_only, token=token)
    source = Path(name_or_path) if name_or_path is not None else None
    if state_dict is None:
        if name_or_path is None:
            raise ValueError(f"{cls.__name__}.from_pretrained(None, ...) needs the weights as state_dict=")
        weights_path: Path | str = resolve_weights(name_or_path, **hub_kwargs)
        resolve_sibling = None
        if not source.exists():  # a Hub repository: shards are fetched by name from the same repo
            resolve_sibling = lambda shard: resolve_file(name_or_path, shard, **hub_kwargs)  # noqa: E731
        state_dict = read_state_dict(weights_path, resolve_sibling=resolve_sibling)
    else:
        weights_path = "the given state_dict"
    given = config.to_dict() if config is not None else config_overrides  # fields the weights need not be asked for
    layout_known = layouts.detect_layout(state_dict) != "unknown"
    inferred = None
    if layout_known:
        state_dict, inferred = layouts.to_hf_layout(state_dict, source=weights_path, given=given)

    if config is None:
        config = _config_beside_weights(name_or_path, source, hub_kwargs, state_dict, weights_path, layout_known, inferred)
    else:
        config = config.copy()
    if config_overrides:
        config = _with_overrides(config, config_overrides)
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
        config.validate()

    state_dict = layouts.resize_position_embeddings(state_dict, config, source=weights_path)
    target_cls = cls.class_for_config(config)
    with initialisation.deferred():  # no initial draw of the weights the checkpoint overwrites
        model = target_cls(config, **init_kwargs)
    info = load_state_dict_into(model, state_dict, ignore_mismatched_sizes=ignore_mismatched_sizes, source=str(weights_path))
    initialisation.draw_deferred(model, info["missing_keys"] | {key for key, _, _ in info["mismatched_keys"]})
    requested = torch_dtype if torch_dtype is not None else dtype
    # "auto": the dtype the config records for the weights, as in the reference.
    resolved_dtype = _resolve_dtype(config.dtype if requested == "auto" and isinstance(config.dtype, torch.dtype) else requested)
    if resolved_dtype is not None or device is not None:
        model.to(device=device, dtype=resolved_dtype)
    model.config.dtype = model.dtype
    model.eval()
    return (model, info) if output_loading_info else model


# ---------------------------------------------------------------------------- writing
def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write one safetensors file atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})


def save_pretrained(model: "LoadableModel", save_directory: str | os.PathLike, max_shard_size: int | str | None = None) -> None:
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.copy()
    config.architectures = [type(model).__name__]
    state_dict = model.state_dict()

    shards: list[dict[str, torch.Tensor]] = [{}]
    if max_shard_size is not None:
        limit, current = _parse_size(max_shard_size), 0
        for key, tensor in state_dict.items():
            size = tensor.numel() * tensor.element_size()
            if shards[-1] and current + size > limit:
                shards.append({})
                current = 0
            shards[-1][key] = tensor
            current += size
    else:
        shards[0] = dict(state_dict)

    # Remove weights of an earlier save in another layout so the folder is unambiguous.
    stale = [p for p in directory.glob("model-*-of-*.safetensors")] + [directory / n for n in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "pytorch_model.bin")]
    if len(shards) == 1:
        save_state_dict(shards[0], directory / SAFE_WEIGHTS_NAME)
        keep = {directory / SAFE_WEIGHTS_NAME}
    else:
        weight_map, keep = {}, set()
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_state_dict(shard, directory / name)
            keep.add(directory / name)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(directory / SAFE_WEIGHTS_INDEX_NAME, json.dumps(index, indent=2) + "\n")
        keep.add(directory / SAFE_WEIGHTS_INDEX_NAME)
    for path in stale:
        if path not in keep and path.exists():
            path.unlink()
    config.save_pretrained(directory)


def save_timm(model: "LoadableModel", path: str | Path) -> dict[str, Any]:
    """Write ``model`` as a timm-layout safetensors file; return how to build the timm model for it
    (``{"model_name": ... or None, "distilled": ..., "kwargs": {...}}``, also kept in the file's metadata)."""
    state_dict = to_timm_layout(model)
    recipe = {
        "model_name": timm_model_name(model.config),
        "distilled": model.num_prefix_tokens == 2,
        "kwargs": timm_model_kwargs(model.config, with_head="head.weight" in state_dict),
    }
    save_state_dict(state_dict, path, metadata={"timm_recipe": json.dumps(recipe)})
    return recipe
