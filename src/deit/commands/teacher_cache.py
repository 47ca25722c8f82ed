"""``deit teacher-cache``: the teacher's top-K logits of every view of a training run, computed once.

It takes ``deit train``'s options: the command line of the student's run with ``train`` replaced
by ``teacher-cache`` and ``--output`` pointing at the cache; the student's run then adds
``--teacher-cache DIR`` and no longer runs its teacher.
"""

from __future__ import annotations

import argparse
import sys

from ..train.teacher_cache import ALL_CLASSES_UP_TO, DEFAULT_TOP_K
from .train import TRAIN_OPTIONS, add_train_options, config_from_args

# Every option of deit train but the one that reads a cache.
CACHE_OPTIONS = {title: [option for option in options if option[0] != "teacher_cache"] for title, options in TRAIN_OPTIONS.items()}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "teacher-cache", help="run the teacher once over every augmented view of a training run and store its top-K logits",
        description="Run the teacher over every view a `deit train` run with the same options will train on (every epoch, "
        "every crop, flip, RandAugment, erasing and mixup/cutmix) and store its top-K logits in --output; then "
        "`deit train ... --teacher-cache DIR` trains from them without running the teacher, bit-identical to the run with "
        "the teacher online when K is every class. Interrupted, the same command continues where it stopped.",
    )
    add_train_options(p, CACHE_OPTIONS)
    p.add_argument("--top-k", type=int, metavar="K", help=f"logits kept per view (default: every class when there are at most "
                   f"{ALL_CLASSES_UP_TO}, exact for soft distillation at any temperature; else {DEFAULT_TOP_K}, the rest of the "
                   "softmax spread evenly over the other classes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.teacher_cache import format_size
    from ..train.teacher_cache_builder import build_teacher_cache

    config = config_from_args(args)
    result = build_teacher_cache(config, top_k=args.top_k)
    if not result.is_main:
        return 0
    if not result.complete:
        print(f"stopped after {config.stop_after_steps} steps; continue with the same command (without --stop-after-steps)", file=sys.stderr)
        return 0
    layout = result.layout
    images = layout.epochs * layout.views_per_epoch
    print(f"teacher cache: {result.folder} ({format_size(layout.total_bytes)}, {layout.bytes_per_view} bytes per view, "
          f"{images} views in {layout.epochs} epoch(s), {result.seconds:.1f} s); train from it with: deit train ... --teacher-cache {result.folder}")
    return 0
