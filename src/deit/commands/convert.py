"""``deit convert SRC DST [--to hf|timm]``: rewrite a checkpoint in another layout.

SRC is anything ``from_pretrained`` reads (a Hugging Face folder, a timm or original DeiT weights
file, a Hub name). ``--to hf`` writes a folder (config.json, model.safetensors,
preprocessor_config.json); ``--to timm`` writes one timm-layout safetensors file. A checkpoint
with 1000 classes and no class names (every timm file) gets the ImageNet-1k names in the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..convert import TIMM_LAYER_NORM_EPS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint between the Hugging Face and timm layouts")
    p.add_argument("src", metavar="SRC", help="checkpoint folder, weights file (.safetensors/.pth/.bin) or Hub name")
    p.add_argument("dst", metavar="DST", help="output folder (--to hf) or .safetensors file (--to timm)")
    p.add_argument("--to", choices=("hf", "timm"), default=None,
                   help="output layout (default: timm when DST ends in .safetensors, else hf)")
    p.add_argument("--num-attention-heads", type=int, default=None,
                   help="heads per layer, for timm weights of a width no released DeiT has (192/384/768 are known)")
    p.add_argument("--image-size", type=int, default=None, help="resample the position embeddings to this input size")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for Hub names")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    p.add_argument("--local-files-only", action="store_true", help="never download; use the local Hub cache only")
    p.set_defaults(func=run)


def output_layout(args: argparse.Namespace) -> str:
    if args.to is not None:
        if args.to == "hf" and args.dst.endswith(".safetensors"):
            raise ValueError(f"--to hf writes a folder, but DST {args.dst!r} names a .safetensors file")
        return args.to
    return "timm" if args.dst.endswith(".safetensors") else "hf"


def processor_for(src: str, image_size: int, hub_kwargs: dict[str, Any]):
    """The source's own preprocessor_config.json when it has one, else the DeiT evaluation recipe
    (resize to image_size / 0.875, center crop to image_size)."""
    from ..hub import resolve_file
    from ..processing import PREPROCESSOR_CONFIG_NAME, DeiTImageProcessor, eval_resize_size

    source = Path(src)
    folder = source if source.is_dir() else source.parent if source.exists() else src
    found = resolve_file(folder, PREPROCESSOR_CONFIG_NAME, required=False, **hub_kwargs)
    if found is not None:
        return DeiTImageProcessor.from_json_file(found)
    return DeiTImageProcessor(size=eval_resize_size(image_size), crop_size=image_size)


def timm_usage(recipe: dict[str, Any], dst: str) -> str:
    num_classes = recipe["kwargs"]["num_classes"]
    if recipe["model_name"]:
        return (f"timm.create_model({recipe['model_name']!r}, pretrained=True, num_classes={num_classes}, "
                f"pretrained_cfg_overlay=dict(file={dst!r}, num_classes={num_classes}))")
    cls = "timm.models.deit.VisionTransformerDistilled" if recipe["distilled"] else "timm.models.vision_transformer.VisionTransformer"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in recipe["kwargs"].items())
    return f"{cls}({kwargs}).load_state_dict(safetensors.torch.load_file({dst!r}))"


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoModelAsSaved
    from ..checkpoint import save_timm
    from ..labels import imagenet_class_names, needs_imagenet_names

    layout = output_layout(args)
    dst = Path(args.dst)
    if layout == "hf" and dst.is_file():
        raise ValueError(f"{dst} is a file; --to hf writes a folder")
    hub_kwargs = dict(cache_dir=args.cache_dir, revision=args.revision, local_files_only=args.local_files_only)
    overrides = {k: v for k, v in (("num_attention_heads", args.num_attention_heads), ("image_size", args.image_size)) if v is not None}
    model = AutoModelAsSaved.from_pretrained(args.src, **hub_kwargs, **overrides)
    kind = type(model).__name__

    if layout == "hf":
        if needs_imagenet_names(model.config):
            names = imagenet_class_names()
            model.config.id2label = dict(enumerate(names))
            model.config.label2id = {name: i for i, name in enumerate(names)}
            print("note: 1000 classes without names: labelled with the ImageNet-1k class names (torchvision's list, class 0 = "
                  f"{names[0]!r}); the checkpoints with 1000 classes are ImageNet-1k classifiers")
        model.save_pretrained(dst)
        processor_for(args.src, model.config.image_size, hub_kwargs).save_pretrained(dst)
        print(f"wrote {kind} to {dst}/ (config.json, model.safetensors, preprocessor_config.json)")
        return 0

    recipe = save_timm(model, dst)
    print(f"wrote {kind} in timm layout to {dst}")
    print(f"load it with: {timm_usage(recipe, str(dst))}")
    if model.config.layer_norm_eps != TIMM_LAYER_NORM_EPS:
        print(f"note: this model uses LayerNorm eps {model.config.layer_norm_eps:g}; timm uses {TIMM_LAYER_NORM_EPS:g}, "
              "so timm's outputs differ from ours by a rounding-level amount")
    return 0
