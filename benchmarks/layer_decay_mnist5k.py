"""Layer-wise learning-rate decay when fine-tuning a SimMIM-pre-trained student on 10 % of the mnist5k labels.

Per seed: pre-train the student of ``benchmarks/pretrain_mnist5k.py`` by SimMIM on the 4,000
training digits without labels, then fine-tune it twice on the same 40 labelled digits per class
with the same recipe: every layer at one rate (``--layer-decay 1``), and with layer decay
(``--layer-decay 0.65``, the default for such a checkpoint). Prints a markdown table.

    .venv/bin/python benchmarks/layer_decay_mnist5k.py [--seeds 0 1 2] [--layer-decay 0.65]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from deit.commands.pretrain_demo import DEFAULT_FINETUNE_EPOCHS, DEFAULT_PRETRAIN_EPOCHS
from deit.train.engine import fit
from deit.train.loaders import build_datasets
from deit.demo.recipe import ClassBalancedSubset, load_data
from deit.demo.pretrain import LABELLED_PER_CLASS, finetune_config, pretrain_config
from deit.train.pretraining import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layer-decay", type=float, default=0.65)
    parser.add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS)
    parser.add_argument("--epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS)
    parser.add_argument("--out", default="runs/bench-layer-decay-mnist5k")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = {"--layer-decay 1": 1.0, f"--layer-decay {args.layer_decay:g}": args.layer_decay}
    accuracy: dict[str, list[float]] = {name: [] for name in settings}
    start = time.perf_counter()
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        pre_config = pretrain_config(str(out / "pretrain"), epochs=args.pretrain_epochs, seed=seed)
        unlabelled_train, unlabelled_val = build_datasets(pre_config, pre_config.image_size, labelled=False)
        pretrain(pre_config, train_dataset=unlabelled_train, val_dataset=unlabelled_val)
        for name, decay in settings.items():
            config = finetune_config(str(out / f"decay{decay:g}"), str(out / "pretrain" / "last"), epochs=args.epochs, seed=seed)
            config = dataclasses.replace(config, layer_decay=decay, overwrite=True)
            train_set, val_set = load_data(config)
            result = fit(config, train_dataset=ClassBalancedSubset(train_set, LABELLED_PER_CLASS), val_dataset=val_set)
            accuracy[name].append(result.final_metrics["val_acc1"])
            print(f"seed {seed}, {name}: {accuracy[name][-1]:.2f} % top-1 ({time.perf_counter() - start:.0f} s so far)", flush=True)
    names = list(settings)
    differences = [b - a for a, b in zip(accuracy[names[0]], accuracy[names[1]])]
    print(f"\n| fine-tuning the SimMIM-pre-trained student, {LABELLED_PER_CLASS} labels per class | top-1 (%) | per seed |")
    print("|---|---:|---|")
    for name in names:
        values = accuracy[name]
        print(f"| {name} | {statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")
    print(f"| difference | {statistics.mean(differences):+.2f} | {', '.join(f'{d:+.2f}' for d in differences)} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
