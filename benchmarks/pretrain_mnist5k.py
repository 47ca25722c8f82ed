"""SimMIM pre-training + fine-tuning vs training from scratch on 10 % of the mnist5k labels, over seeds.

Per seed: pre-train the demo's DeiT student on the 4,000 training digits without labels, fine-tune
it on 40 labelled digits per class, and train the same student from scratch on the same digits
with the same recipe and epochs (``deit.demo.pretrain.compare``). Prints a markdown
table and, with ``--markdown``, writes it with the command.

    .venv/bin/python benchmarks/pretrain_mnist5k.py --markdown benchmarks/pretrain_mnist5k.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from seed_report import add_run_arguments, mean_std, write_report

from deit.commands.pretrain_demo import DEFAULT_FINETUNE_EPOCHS, DEFAULT_PRETRAIN_EPOCHS
from deit.demo.pretrain import LABELLED_PER_CLASS, MASK_PATCH_SIZE, PATCH_SIZE, compare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS)
    parser.add_argument("--epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS, help="fine-tuning (and from-scratch) epochs")
    add_run_arguments(parser, out="runs/bench-pretrain-mnist5k")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = [
        compare(Path(args.out) / f"seed{seed}", seed=seed, pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.epochs,
                num_workers=args.num_workers)
        for seed in args.seeds
    ]
    pretrained = [r.pretrained_acc1 for r in results]
    scratch = [r.scratch_acc1 for r in results]
    gains = [p - s for p, s in zip(pretrained, scratch)]
    lines = [
        f"Validation top-1 (%) on mnist5k (1,000 held-out digits), mean ± std over seeds {', '.join(map(str, args.seeds))}; "
        f"student: DeiT 4 blocks x 96 wide, 3 heads, patch {PATCH_SIZE} on 28 px; {LABELLED_PER_CLASS * 10} labelled training digits "
        f"(10 %), {args.epochs} epochs, batch 32, the demo's recipe without a teacher; pre-training: SimMIM, "
        f"{args.pretrain_epochs} epochs on the 4,000 training digits without labels, mask blocks of {MASK_PATCH_SIZE} px, ratio 0.6 (10 of 16 blocks).",
        "",
        "| student | top-1 | per seed |",
        "|---|---:|---|",
        f"| SimMIM pre-trained, fine-tuned | {mean_std(pretrained)} | {', '.join(f'{v:.2f}' for v in pretrained)} |",
        f"| from scratch | {mean_std(scratch)} | {', '.join(f'{v:.2f}' for v in scratch)} |",
        f"| difference (pre-trained - scratch) | {mean_std(gains)} | {', '.join(f'{v:+.2f}' for v in gains)} |",
        "",
        f"Validation reconstruction loss after pre-training: {mean_std([r.pretrain_val_loss for r in results], 4)}; "
        f"time per seed: pre-training {mean_std([r.seconds['pretrain'] for r in results], 0)} s, fine-tuning "
        f"{mean_std([r.seconds['finetune'] for r in results], 0)} s, from scratch {mean_std([r.seconds['scratch'] for r in results], 0)} s.",
    ]
    table = "\n".join(lines)
    elapsed = time.perf_counter() - start
    print("\n" + table)
    print(f"\n{elapsed / 60:.1f} min")
    if args.markdown:
        write_report(args.markdown, "SimMIM pre-training on mnist5k: pre-trained + fine-tuned vs from scratch, 10 % of the labels", table, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
