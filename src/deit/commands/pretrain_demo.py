"""``deit demo --pretrain``: masked-image pre-training, then fine-tuning on few labels, on mnist5k.

Pre-trains the demo's DeiT student with SimMIM on the 4,000 training digits without their labels,
fine-tunes it on 10 % of the labels (40 digits per class), trains the same student from scratch
on the same 400 digits for the same number of epochs, and prints both accuracies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_PRETRAIN_EPOCHS = 15
DEFAULT_FINETUNE_EPOCHS = 30
# --quick: the distillation demo's slice of the data (its caller passes it), one epoch per run,
# and 4 labelled digits per class (40: one batch of 32 and a few).
QUICK_EPOCHS = 1
QUICK_LABELLED_PER_CLASS = 4


def run(args: argparse.Namespace, quick_subset: tuple[int, int]) -> int:
    """The demo; ``quick_subset`` = (training, validation) digits per class with ``--quick``."""
    import torch

    from ..atomic import atomic_write_text
    from ..train.metrics import plot_curves
    from ..demo.pretrain import LABELLED_PER_CLASS, compare
    from ..train.pretraining import RECONSTRUCTIONS_NAME

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    quick = QUICK_EPOCHS if args.quick else None
    pretrain_epochs = args.pretrain_epochs or quick or DEFAULT_PRETRAIN_EPOCHS
    finetune_epochs = args.epochs or quick or DEFAULT_FINETUNE_EPOCHS
    labelled = QUICK_LABELLED_PER_CLASS if args.quick else LABELLED_PER_CLASS
    print(f"mnist5k: SimMIM pre-training for {pretrain_epochs} epoch(s) on the training digits without labels, then "
          f"{finetune_epochs} epoch(s) on {labelled} labelled digits per class, against the same student from scratch")
    result = compare(out, seed=args.seed, pretrain_epochs=pretrain_epochs, finetune_epochs=finetune_epochs, labelled_per_class=labelled,
                     subset=quick_subset if args.quick else None, num_workers=args.num_workers, progress=True)
    plot_curves(result.histories, out / "curves.png", title="DeiT student on 10 % of the mnist5k labels: pre-trained vs from scratch")
    table = "\n".join([
        "| student | validation top-1 (%) |",
        "|---|---:|",
        f"| SimMIM pre-trained ({pretrain_epochs} epochs), fine-tuned | {result.pretrained_acc1:.2f} |",
        f"| from scratch | {result.scratch_acc1:.2f} |",
    ])
    print(f"\n{table}\n\nreconstructions of the last pre-training epoch: {out / 'pretrain' / RECONSTRUCTIONS_NAME}; curves: {out / 'curves.png'}")
    elapsed = time.perf_counter() - start
    summary = {
        "pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs, "seed": args.seed, "quick": args.quick,
        "pretrain_val_loss": result.pretrain_val_loss, "pretrained_acc1": result.pretrained_acc1, "scratch_acc1": result.scratch_acc1,
        "seconds": elapsed,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.md", table + "\n")
    print(f"\ndemo finished in {elapsed / 60:.1f} min")
    return 0
