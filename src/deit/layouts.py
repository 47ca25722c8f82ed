"""Checkpoint layouts: detecting them and mapping between them.

Three layouts hold DeiT weights:

- ``hf``: the Hugging Face names our modules use (``deit.encoder.layer.0.attention.attention.query.weight``).
- ``timm``: ``cls_token``, ``dist_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1 /
  attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm``, ``head``, ``head_dist``.
- the DeiT authors' original ``.pth``: timm names inside ``{"model": ...}``
  (:func:`deit.checkpoint.unwrap_state_dict` takes that wrapper off, so it reads as ``timm``).

A timm checkpoint does not carry a config; it is inferred from the tensor shapes. Weights of any
ViT variant our model cannot reproduce exactly (layer scale, register tokens, average pooling, ...)
are refused with the key that gave it away, never loaded approximately.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

    from .config import DeiTConfig

logger = logging.getLogger("deit")

LAYOUT_HF = "hf"
LAYOUT_TIMM = "timm"

# timm's LayerNorm eps; the converted config carries it so outputs match timm exactly.
TIMM_LAYER_NORM_EPS = 1e-6
# Heads of the released DeiT widths (tiny, small, base); other widths default to 64-dim heads.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12}

# What a key found in a timm checkpoint says about a model we cannot reproduce.
_UNSUPPORTED_TIMM_PARTS = (
    ("ls1.", "layer scale (DeiT III / CaiT-style blocks)"),
    ("gamma_", "layer scale (DeiT III / CaiT-style blocks)"),
    ("reg_token", "register tokens"),
    ("fc_norm", "average pooling with a norm before the head (global_pool='avg')"),
    ("attn_pool", "attention-pool head (global_pool='map')"),
    ("norm_pre", "a norm before the blocks (pre_norm=True, CLIP-style)"),
    ("q_norm", "normalised queries/keys (qk_norm=True)"),
    ("pre_logits", "a representation layer before the head"),
)


# ------------------------------------------------------------------------------ detection
def detect_layout(keys: Sequence[str] | Mapping[str, Any]) -> str:
    """``"hf"``, ``"timm"`` (also the original DeiT ``.pth``), or ``"unknown"``."""
    names = list(keys)
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in names):
        return LAYOUT_HF
    if "patch_embed.proj.weight" in names and any(k.startswith("blocks.") for k in names):
        return LAYOUT_TIMM
    return "unknown"


def to_hf_layout(
    state_dict: dict[str, torch.Tensor], source: Path | str = "checkpoint", given: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return the state dict in Hugging Face names, and a config inferred from it (None for ``hf``).

    ``given`` holds config fields the caller already knows (e.g. ``num_attention_heads``); they
    are used instead of guesses where the weights do not determine a field.
    """
    layout = detect_layout(state_dict)
    if layout == LAYOUT_HF:
        return state_dict, None
    if layout == LAYOUT_TIMM:
        return timm_to_hf(state_dict, source, given)
    sample = ", ".join(list(state_dict)[:5])
    raise CheckpointError(
        f"{source}: not a DeiT/ViT checkpoint layout we know (first keys: {sample}); "
        "expected Hugging Face names (deit./vit.embeddings...) or timm names (patch_embed.proj, blocks.N...)"
    )


def is_model_config_file(path: str | Path) -> bool:
    """True for a Hugging Face model ``config.json``; False for another library's file (timm's
    ``config.json`` names an ``architecture`` and holds no model dimensions)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return True  # let the config reader report the problem with its own message
    return not isinstance(data, dict) or "model_type" in data or "hidden_size" in data


# ------------------------------------------------------------------------------ key names
def _body_pairs(depth: int, prefix: str) -> list[tuple[str, str]]:
    """(timm name, Hugging Face name) of every body tensor except the fused qkv."""
    pairs = [
        ("cls_token", f"{prefix}.embeddings.cls_token"),
        ("dist_token", f"{prefix}.embeddings.distillation_token"),
        ("pos_embed", f"{prefix}.embeddings.position_embeddings"),
    ]
    per_layer = (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"))
    modules = [("patch_embed.proj", f"{prefix}.embeddings.patch_embeddings.projection"), ("norm", f"{prefix}.layernorm")]
    for i in range(depth):
        modules += [(f"blocks.{i}.{t}", f"{prefix}.encoder.layer.{i}.{h}") for t, h in per_layer]
    pairs += [(f"{t}.{p}", f"{h}.{p}") for t, h in modules for p in ("weight", "bias")]
    return pairs


def _head_pairs(distilled: bool) -> list[tuple[str, str]]:
    heads = [("head", "cls_classifier"), ("head_dist", "distillation_classifier")] if distilled else [("head", "classifier")]
    return [(f"{t}.{p}", f"{h}.{p}") for t, h in heads for p in ("weight", "bias")]


def _qkv_names(i: int, prefix: str) -> tuple[str, list[str]]:
    base = f"{prefix}.encoder.layer.{i}.attention.attention"
    return f"blocks.{i}.attn.qkv", [f"{base}.{part}" for part in ("query", "key", "value")]


# ------------------------------------------------------------------------- timm -> ours
def _refuse_unsupported(keys: Sequence[str], source: Path | str) -> None:
    for key in keys:
        for marker, meaning in _UNSUPPORTED_TIMM_PARTS:
            if marker in key:
                raise CheckpointError(
                    f"{source}: key {key!r} shows a ViT variant with {meaning}, which DeiT models cannot reproduce; "
                    "only DeiT / plain ViT checkpoints (class token, learned positions, token pooling) are supported"
                )


def infer_timm_config(shapes: Mapping[str, Sequence[int]], source: Path | str = "checkpoint", given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config dict (``model_type`` "deit" or "vit") describing a timm DeiT/ViT checkpoint.

    The number of heads is not in the weights: it comes from the released DeiT width that matches
    (192 -> 3, 384 -> 6, 768 -> 12), else from ``given["num_attention_heads"]`` (what the caller
    passed to ``from_pretrained``), else 64-dim heads are assumed with a warning.
    """
    _refuse_unsupported(list(shapes), source)

    def need(key: str) -> Sequence[int]:
        if key not in shapes:
            raise CheckpointError(f"{source}: timm-layout checkpoint has no {key!r}; it is not a DeiT/ViT checkpoint we can load")
        return shapes[key]

    patch_weight = need("patch_embed.proj.weight")
    if len(patch_weight) != 4 or patch_weight[2] != patch_weight[3]:
        raise CheckpointError(f"{source}: key 'patch_embed.proj.weight' has shape {tuple(patch_weight)}; expected a square convolution kernel (hidden, channels, p, p)")
    hidden, channels, patch = int(patch_weight[0]), int(patch_weight[1]), int(patch_weight[2])
    need("cls_token")
    need("norm.weight")
    distilled = "dist_token" in shapes
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    intermediate = int(need("blocks.0.mlp.fc1.weight")[0])

    prefix_tokens = 2 if distilled else 1
    positions = int(need("pos_embed")[1]) - prefix_tokens
    grid = math.isqrt(max(positions, 0))
    if positions <= 0 or grid * grid != positions:
        raise CheckpointError(
            f"{source}: key 'pos_embed' has {positions + prefix_tokens} positions, which is not {prefix_tokens} prefix token(s) plus a square "
            "patch grid (a model whose position embeddings skip the class token, no_embed_class=True, is not supported)"
        )

    if given and given.get("num_attention_heads"):
        heads = int(given["num_attention_heads"])
    elif hidden in HEADS_BY_WIDTH:
        heads = HEADS_BY_WIDTH[hidden]
    else:
        heads = hidden // 64 if hidden % 64 == 0 else 1
        warnings.warn(
            f"{source}: hidden size {hidden} matches no released DeiT model; assuming {heads} attention head(s). "
            "Pass num_attention_heads=N (deit convert --num-attention-heads N) if the model had another number.",
            stacklevel=3,
        )

    if "head.weight" in shapes:
        num_labels = int(shapes["head.weight"][0])
    else:
        num_labels = 0
    if distilled and ("head.weight" in shapes) != ("head_dist.weight" in shapes):
        raise CheckpointError(f"{source}: a distilled checkpoint needs both 'head' and 'head_dist' (or neither); found only one")
    if not distilled and "head_dist.weight" in shapes:
        raise CheckpointError(f"{source}: key 'head_dist.weight' without a 'dist_token'; not a DeiT checkpoint we can load")

    return {
        "model_type": "deit" if distilled else "vit",
        "architectures": ["DeiTForImageClassificationWithTeacher" if distilled else "ViTForImageClassification"],
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "layer_norm_eps": TIMM_LAYER_NORM_EPS,
        "image_size": grid * patch,
        "patch_size": patch,
        "encoder_stride": patch,
        "num_channels": channels,
        "qkv_bias": "blocks.0.attn.qkv.bias" in shapes,
        "num_labels": num_labels,
    }


def timm_to_hf(
    state_dict: Mapping[str, torch.Tensor], source: Path | str = "checkpoint", given: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a timm / original-DeiT state dict to Hugging Face names; return it with its inferred config."""
    config = infer_timm_config({k: tuple(v.shape) for k, v in state_dict.items()}, source, given)
    prefix = config["model_type"]
    depth = config["num_hidden_layers"]
    pairs = dict(_body_pairs(depth, prefix) + _head_pairs(prefix == "deit"))

    remaining = dict(state_dict)
    converted: dict[str, torch.Tensor] = {}
    for i in range(depth):
        fused, split_names = _qkv_names(i, prefix)
        for param in ("weight", "bias"):
            tensor = remaining.pop(f"{fused}.{param}", None)
            if tensor is None:
                if param == "weight":
                    raise CheckpointError(f"{source}: timm-layout checkpoint has no {fused}.weight (layer {i} of {depth})")
                continue
            if tensor.shape[0] != 3 * config["hidden_size"]:
                raise CheckpointError(f"{source}: key '{fused}.{param}' has shape {tuple(tensor.shape)}; expected {3 * config['hidden_size']} rows (query, key, value)")
            # timm stacks query, key and value along the output dimension.
            for name, part in zip(split_names, tensor.chunk(3, dim=0)):
                converted[f"{name}.{param}"] = part.clone()
    for timm_name, hf_name in pairs.items():
        if timm_name in remaining:
            converted[hf_name] = remaining.pop(timm_name)
    if remaining:
        raise CheckpointError(
            f"{source}: timm-layout checkpoint has key(s) a DeiT/ViT model has no place for: {', '.join(sorted(remaining)[:8])}"
        )
    return converted, config


# ------------------------------------------------------------------------- ours -> timm
def to_timm_layout(model: "nn.Module") -> dict[str, torch.Tensor]:
    """The state dict of ``model`` in timm names, loadable by ``timm``'s ``VisionTransformer`` /
    ``VisionTransformerDistilled`` built with :func:`timm_model_kwargs`.

    A classifier maps to ``head`` (and ``head_dist``); a bare body maps to a timm model with
    ``num_classes=0`` (the Hugging Face pooler has no timm counterpart and is left out).
    """
    name = type(model).__name__
    distilled = model.num_prefix_tokens == 2
    if name.endswith("ForMaskedImageModeling"):
        raise ValueError(f"{name} has no timm counterpart (timm has no masked-image-modeling DeiT); convert its body with DeiTModel")
    if name == "DeiTForImageClassification":
        raise ValueError(
            "DeiTForImageClassification (one head on the [CLS] token, with a distillation token) has no timm counterpart: "
            "timm's distilled DeiT averages two heads. Convert a DeiTForImageClassificationWithTeacher, or the body (DeiTModel)"
        )
    if model.config.hidden_act != "gelu":
        raise ValueError(f"timm's DeiT uses exact GELU; a model with hidden_act={model.config.hidden_act!r} would not give the same outputs there")

    prefix = model.base_model_prefix
    own = model.state_dict()
    if not any(k.startswith(prefix + ".") for k in own):  # a bare body keeps its names without the prefix
        own = {f"{prefix}.{k}": v for k, v in own.items()}
    own = {k: v for k, v in own.items() if not k.startswith(f"{prefix}.pooler.")}  # no timm counterpart
    to_timm = {hf: t for t, hf in _body_pairs(model.config.num_hidden_layers, prefix) + _head_pairs(distilled)}

    out: dict[str, torch.Tensor] = {}
    for i in range(model.config.num_hidden_layers):
        fused, split_names = _qkv_names(i, prefix)
        for param in ("weight", "bias"):
            parts = [own.pop(f"{n}.{param}", None) for n in split_names]
            if all(p is not None for p in parts):
                out[f"{fused}.{param}"] = torch.cat(parts, dim=0)
    for key in list(own):
        if key in to_timm:
            out[to_timm[key]] = own.pop(key)
    if own:  # every parameter of our classes has a timm name; anything left is a bug, not user error
        raise ValueError(f"{name}: no timm name for {', '.join(sorted(own))}")
    return {k: v.detach().contiguous() for k, v in out.items()}


def timm_model_kwargs(config: "DeiTConfig", with_head: bool = True) -> dict[str, Any]:
    """Keyword arguments for timm's ``VisionTransformer`` / ``VisionTransformerDistilled`` that
    build the model :func:`to_timm_layout` writes weights for (``num_classes=0`` without a head)."""
    mlp_ratio = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * mlp_ratio) != config.intermediate_size:  # timm rebuilds the width from the ratio
        raise ValueError(f"intermediate_size={config.intermediate_size} is not expressible as a timm mlp_ratio of hidden_size={config.hidden_size}")
    return {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "num_classes": config.num_labels if with_head else 0,
    }


def timm_model_name(config: "DeiTConfig") -> str | None:
    """The timm model name of a released DeiT architecture (e.g. ``deit_tiny_distilled_patch16_224``), or None."""
    from .config import PRESETS

    for preset, fields in PRESETS.items():
        dims = {k: v for k, v in fields.items() if k not in ("num_labels", "model_type")}
        if fields["model_type"] == config.model_type and all(getattr(config, k) == v for k, v in dims.items()):
            return preset.replace("-", "_")
    return None


# ------------------------------------------------------------------- position embeddings
def resize_position_embeddings(state_dict: dict[str, torch.Tensor], config: "DeiTConfig", source: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Resample the checkpoint's position embeddings to ``config.image_size`` when they differ.

    The prefix positions are kept and the patch grid is resized bicubically with antialiasing,
    the arithmetic timm applies when loading weights at another resolution, so the result
    matches ``timm.create_model(..., img_size=N, pretrained=True)``.
    """
    keys = [k for k in state_dict if k.endswith("embeddings.position_embeddings")]
    if len(keys) != 1:
        return state_dict
    key = keys[0]
    table = state_dict[key]
    prefix_tokens = 2 if config.model_type == "deit" else 1
    new_grid = config.image_size // config.patch_size
    if table.ndim != 3 or table.shape[1] == new_grid**2 + prefix_tokens:
        return state_dict
    old_positions = table.shape[1] - prefix_tokens
    old_grid = math.isqrt(max(old_positions, 0))
    if old_positions <= 0 or old_grid * old_grid != old_positions:
        return state_dict  # not a square grid: leave it to the shape check, which names the key
    prefix, patches = table[:, :prefix_tokens], table[:, prefix_tokens:]
    dim = table.shape[-1]
    grid = patches.float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(table.dtype)
    logger.info("%s: position embeddings resampled from a %dx%d to a %dx%d patch grid (image_size=%d)", source, old_grid, old_grid, new_grid, new_grid, config.image_size)
    return {**state_dict, key: torch.cat((prefix, patches), dim=1)}
