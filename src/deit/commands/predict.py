"""``deit predict IMAGE... --model DIR``: top-k labels and probabilities per image."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

from .precision import add_precision_options, is_int8, model_dtype


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify images with a DeiT checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders of images, searched recursively)")
    p.add_argument("--model", required=True, help="checkpoint folder, weights file, or Hub name")
    p.add_argument("--top-k", type=int, default=5, help="labels to show per image")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of text: per image its path as given, its name (the path under the "
                        "inputs' common folder, as deit attention names its pictures), and the predictions or the error")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or mps")
    add_precision_options(p, "inference precision")
    p.add_argument("--workers", type=int, default=0,
                   help="image decoding processes (default 0: decode with --threads threads in this process, the faster on few cores)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8), help="image decoding threads per process (default: one per core, up to 8)")
    p.add_argument("--resize", choices=("pil", "torch"), default="pil",
                   help="pil: Pillow's bicubic, equal to DeiTImageProcessor bit for bit (default); torch: torchvision's, "
                        "equal to transformers' default (torchvision-backend) processor, faster")
    p.add_argument("--draft", action="store_true", help="faster reduced-size JPEG decoding (outputs move by a few 8-bit levels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoModelForImageClassification
    from ..labels import class_names
    from ..loading import expand_inputs, load_batches, output_names, to_model_input
    from ..optimize import default_cache_dir, optimize
    from ..processing import DeiTImageProcessor

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threads < 1 or args.workers < 0:
        raise ValueError(f"--threads must be at least 1 and --workers at least 0, got {args.threads} and {args.workers}")
    dtype = model_dtype(args)
    model = optimize(AutoModelForImageClassification.from_pretrained(args.model, torch_dtype=dtype, device=args.device),
                     dtype=args.dtype if is_int8(args) else None, backend=args.backend, cache_dir=default_cache_dir())
    processor = DeiTImageProcessor.for_model(args.model, model.config.image_size)
    id2label = class_names(model.config)
    k = min(args.top_k, model.config.num_labels)

    paths = expand_inputs(args.images)
    names = output_names(paths)
    results: list[dict[str, Any]] = [{} for _ in paths]  # in the order of the paths
    failures = 0
    for batch in load_batches(paths, processor, args.batch_size, args.workers, draft=args.draft, threads=args.threads, resize=args.resize):
        for index, reason in batch.failures:
            failures += 1
            print(f"deit predict: error: {paths[index]}: {reason}", file=sys.stderr)
            results[index] = {"image": str(paths[index]), "name": names[index], "error": reason}
        if not batch.indices:
            continue
        pixel_values = to_model_input(batch.pixels, processor, args.device, dtype)
        with torch.inference_mode():
            logits = model(pixel_values).logits.float()
        probs, ids = logits.softmax(-1).topk(k, dim=-1)
        for index, p_row, id_row in zip(batch.indices, probs.tolist(), ids.tolist()):
            preds = [{"label": id2label.get(i, str(i)), "id": i, "score": round(p, 6)} for p, i in zip(p_row, id_row)]
            results[index] = {"image": str(paths[index]), "name": names[index], "predictions": preds}

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
