"""``deit eval MODEL --data SPEC``: top-1 / top-5 of a checkpoint on a data set.

For a distilled checkpoint the CLS head, the distillation head and their average are reported.
Images are prepared with the authors' evaluation transform (shorter side to
``image_size / crop_pct``, centre crop; the checkpoint's mean/std: the one rule of
:mod:`deit.images`) or with the checkpoint's own image processor (``--transform processor``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from ..train.data import EVAL_SPLITS
from ..train.recipe import TrainConfig
from .precision import add_precision_options, is_int8, model_dtype


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="top-1/top-5 accuracy of a checkpoint on a data set")
    p.add_argument("model", metavar="MODEL", help="checkpoint folder, weights file, or Hub name")
    p.add_argument("--data", required=True, help="mnist5k, an ImageFolder folder, or hf:PATH (a datasets save_to_disk folder)")
    p.add_argument("--split", choices=EVAL_SPLITS, default=None,
                   help="which images of --data: val (the validation split: a val/ folder, or the 10 %% that deit train holds "
                   "out of a plain class-folder tree), train, or all; default: val where the data has a val/ folder or split, "
                   "all for a plain folder of class folders (a test set)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--transform", choices=("authors", "processor"), default="authors",
                   help="authors: resize to size/crop-pct + centre crop; processor: the checkpoint's preprocessor_config.json")
    p.add_argument("--crop-pct", type=float, default=0.875, help="crop ratio of the authors' transform (default 0.875)")
    p.add_argument("--interpolation", choices=("bicubic", "bilinear"), default="bicubic", help="resize filter of the authors' transform")
    p.add_argument("--num-workers", type=int, default=TrainConfig().resolved_num_workers,
                   help="DataLoader processes that decode images (default: up to 4, one core left to the model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_precision_options(p, "precision: fp32 and bf16 run deit.optimize's inference copy on the CPU, otherwise autocast")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.set_defaults(func=run)


def label_order(id2label: dict[int, str], classes: list[str]) -> list[int] | None:
    """Model id of each data set class when the names say the order differs; None when the order
    is the same (or the model's labels are not names to match: then the order is assumed)."""
    if len(id2label) != len(classes):
        raise ValueError(f"the model predicts {len(id2label)} classes but the data set has {len(classes)}")
    names = [id2label[i] for i in range(len(id2label))]
    if names == classes or sorted(names) != sorted(classes):
        return None
    return [names.index(c) for c in classes]


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..auto import AutoModelForImageClassification
    from ..optimize import default_cache_dir, optimize
    from ..train.data import build_dataset, collate_readable, default_eval_split
    from ..train.evaluate import evaluate, format_metrics
    from ..train.samplers import ShardedEvalSampler
    from ..train.transforms import ProcessorTransform, build_eval_transform
    from ..processing import DeiTImageProcessor

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    dtype = model_dtype(args)
    plain = AutoModelForImageClassification.from_pretrained(args.model, device=args.device)
    # deit.optimize's inference copy where it applies (the CPU, float32, bfloat16 or int8);
    # elsewhere optimize returns the model itself, which then runs under autocast.
    # The engine choice and the ONNX Runtime engine's graph files are kept per machine and weights.
    model = (optimize(plain, dtype=args.dtype if is_int8(args) else dtype, backend=args.backend, cache_dir=default_cache_dir())
             if dtype != torch.float16 else plain)
    processor = DeiTImageProcessor.for_model(args.model, model.config.image_size)
    if args.transform == "processor":
        transform: Any = ProcessorTransform(processor)
    else:
        transform = build_eval_transform(
            model.config.image_size, mean=processor.image_mean, std=processor.image_std,
            crop_pct=args.crop_pct, interpolation=args.interpolation,
        )
    split = args.split or default_eval_split(args.data)
    dataset = build_dataset(args.data, split, transform)
    if args.split is None and split == "all":
        print(f"deit eval: {args.data} is a folder of class folders without train/ and val/: evaluating all its "
              f"{len(dataset)} images (--split val: the 10 % hold-out that deit train validates on)", file=sys.stderr)
    dataset.replace_corrupt = False  # a corrupt image is left out, not scored as the next one
    dataset.quiet = True  # named once below
    order = label_order(model.config.id2label, dataset.classes)
    if order is not None:
        dataset.targets = [order[t] for t in dataset.targets]
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=ShardedEvalSampler(len(dataset)),
        num_workers=args.num_workers, persistent_workers=False, collate_fn=collate_readable,
    )
    metrics = evaluate(model, loader, device=args.device, dtype=dtype if model is plain else None)
    if dataset.num_corrupt:
        print(f"deit eval: left out {dataset.num_corrupt} corrupt image(s): {', '.join(dataset.corrupt_files()[:5])}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "split": split, "transform": args.transform,
                          "corrupt_images": dataset.num_corrupt, **metrics}, indent=2))
    else:
        print(f"{args.model} on {args.data} ({split}, {args.transform} transform)")
        print(format_metrics(metrics))
    return 0
