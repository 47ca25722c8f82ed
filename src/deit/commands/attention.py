"""``deit attention``: where the [CLS] and [DIST] tokens look, as one PNG per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("attention", help="draw the attention maps of the [CLS] and [DIST] tokens over images (PNG)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders of images, searched recursively)")
    p.add_argument("--model", required=True, help="checkpoint folder, weights file or Hub name")
    p.add_argument("--out", required=True,
                   help="folder for the pictures: OUT/NAME.attention.png, NAME the image's path under the inputs' common folder "
                        "(its file name when all come from one folder), so same-named files from different folders never overwrite each other")
    p.add_argument("--method", choices=("rollout", "last-layer"), default="rollout",
                   help="rollout: attention flow through every layer (Abnar & Zuidema 2020); last-layer: the last layer's attention. "
                        "Maps are drawn in multiples of uniform attention (1 = every patch alike)")
    p.add_argument("--token", choices=("cls", "dist", "both"), default="both", help="which token's map to draw")
    p.add_argument("--head", type=int, default=None, help="one attention head in every layer (default: the mean of the heads)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..auto import AutoModelForImageClassification
    from ..explain import explain, render
    from ..images import ImageReadError, read_image
    from ..labels import class_names
    from ..loading import expand_inputs, output_names
    from ..processing import DeiTImageProcessor

    model = AutoModelForImageClassification.from_pretrained(args.model, device=args.device, attn_implementation="eager")
    processor = DeiTImageProcessor.for_model(args.model, model.config.image_size)
    tokens = ("cls", "dist") if args.token == "both" else (args.token,)
    if args.token == "dist" and model.num_prefix_tokens < 2:
        raise ValueError(f"{args.model}: a ViT checkpoint has no [DIST] token; use --token cls")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(processor.image_mean).view(-1, 1, 1)
    std = torch.tensor(processor.image_std).view(-1, 1, 1)

    id2label = class_names(model.config)
    paths = expand_inputs(args.images)
    failures = 0
    for path, name in zip(paths, output_names(paths)):
        try:
            # The file as decoded by deit.images; the processor's mode policy follows its mean/std.
            pixel_values = processor(read_image(path, str(path)), return_tensors="pt")["pixel_values"]
        except ValueError as err:
            failures += 1
            print(f"deit attention: error: {path}: {err.reason if isinstance(err, ImageReadError) else err}", file=sys.stderr)
            continue
        result = explain(model, pixel_values.to(args.device, model.dtype), method=args.method, tokens=tokens, head=args.head)
        target = out / f"{name}.attention.png"
        render((pixel_values[0] * std + mean), result, 0, id2label, target, title=name)
        labels = ", ".join(f"{head}: {id2label.get(int(ids[0]), str(int(ids[0])))}" for head, ids in result.predictions.items())
        print(f"{path} -> {target} ({labels})")
    if failures:
        print(f"deit attention: {failures} of {len(paths)} file(s) could not be drawn", file=sys.stderr)
        return 1
    return 0
