"""``deit predict IMAGE... --model DIR``: top-k labels and probabilities per image."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..dtypes import DTYPES, PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify images with a DeiT checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders of images)")
    p.add_argument("--model", required=True, help="checkpoint folder, weights file, or Hub name")
    p.add_argument("--top-k", type=int, default=5, help="labels to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=PRECISIONS, default="fp32", help="inference precision")
    p.add_argument("--workers", type=int, default=0,
                   help="image decoding processes (default 0: decode with --threads threads in this process, the faster on few cores)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8), help="image decoding threads per process (default: one per core, up to 8)")
    p.add_argument("--resize", choices=("pil", "torch"), default="pil",
                   help="pil: Pillow's bicubic, equal to DeiTImageProcessor bit for bit (default); torch: torchvision's, "
                        "equal to transformers' default (torchvision-backend) processor, faster")
    p.add_argument("--draft", action="store_true", help="faster reduced-size JPEG decoding (outputs move by a few 8-bit levels)")
    p.set_defaults(func=run)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (sorted)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoModelForImageClassification
    from ..loading import load_batches, to_model_input
    from ..optimize import optimize
    from ..processing import DeiTImageProcessor

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threads < 1 or args.workers < 0:
        raise ValueError(f"--threads must be at least 1 and --workers at least 0, got {args.threads} and {args.workers}")
    dtype = DTYPES[args.dtype]
    model = optimize(AutoModelForImageClassification.from_pretrained(args.model, torch_dtype=dtype, device=args.device))
    processor = DeiTImageProcessor.for_model(args.model, model.config.image_size)
    id2label = model.config.id2label
    k = min(args.top_k, model.config.num_labels)

    paths = expand_inputs(args.images)
    results: list[dict[str, Any]] = [{} for _ in paths]  # in the order of the paths
    failures = 0
    for batch in load_batches(paths, processor, args.batch_size, args.workers, draft=args.draft, threads=args.threads, resize=args.resize):
        for index, reason in batch.failures:
            failures += 1
            print(f"deit predict: error: {paths[index]}: {reason}", file=sys.stderr)
            results[index] = {"image": str(paths[index]), "error": reason}
        if not batch.indices:
            continue
        pixel_values = to_model_input(batch.pixels, processor, args.device, dtype)
        with torch.inference_mode():
            logits = model(pixel_values).logits.float()
        probs, ids = logits.softmax(-1).topk(k, dim=-1)
        for index, p_row, id_row in zip(batch.indices, probs.tolist(), ids.tolist()):
            preds = [{"label": id2label.get(i, str(i)), "id": i, "score": round(p, 6)} for p, i in zip(p_row, id_row)]
            results[index] = {"image": str(paths[index]), "predictions": preds}

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            if "predictions" not in item:
                continue
            print(item["image"])
            for pred in item["predictions"]:
                print(f"  {pred['score']:.4f}  {pred['label']}")
    if failures:
        print(f"deit predict: {failures} of {len(paths)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0
