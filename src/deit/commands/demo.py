"""``deit demo``: distillation through attention where it pays, end to end, on the built-in mnist5k data.

Few labels, many images without: of the 4,000 training digits only the first 40 of each class
keep their labels. A small convnet teacher learns those 400; then the same small DeiT student is
trained twice with the same budget, side by side (one process each): on the 400 labelled images
alone, and with hard distillation on all 4,000 (``deit train --labels-per-class 40``: the
DIST head learns the teacher on every image, the CLS head the labels where there are labels).
Prints a table of validation accuracy per head, saves the distilled student in the Hugging Face
layout, and classifies a few held-out digits with ``deit predict``. Two CPU cores are enough.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

SAMPLE_COUNT = 6
# --quick: the same steps on a class-balanced slice of the data (300 training, 200 validation
# images, 3 labels per class) for one epoch each, so that the whole pipeline can be checked in seconds.
QUICK_TRAIN_PER_CLASS = 30
QUICK_VAL_PER_CLASS = 20
QUICK_LABELS_PER_CLASS = 3
QUICK_EPOCHS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="few labels, many images without: a teacher and a DeiT student with and without distillation on mnist5k")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    # The defaults live with the recipe (deit/demo/recipe.py); importing it here would load torch for every --help.
    p.add_argument("--epochs", type=int, help=f"student epochs per run (default: the recipe's; {QUICK_EPOCHS} with --quick)")
    p.add_argument("--teacher-epochs", type=int, help=f"teacher epochs (default: the recipe's; {QUICK_EPOCHS} with --quick)")
    p.add_argument("--labels-per-class", type=int,
                   help=f"training images per class that keep their label (default: the recipe's; {QUICK_LABELS_PER_CLASS} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK_TRAIN_PER_CLASS * 10} training and {QUICK_VAL_PER_CLASS * 10} validation images, "
                        f"{QUICK_EPOCHS} epoch(s) per model (accuracies are not meaningful)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the teacher and student runs (initial weights, augmentation, data order) and of the sample digits shown")
    # One compute thread per process (the two students train side by side): on a busy machine
    # several times faster than more (OpenMP threads that wait for a descheduled sibling waste
    # most of their time), so the demo's time stays predictable.
    p.add_argument("--threads", type=int, default=1, help="torch compute threads per process (default 1)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes per student (default 0: the two students fill two cores)")
    # The other demo (commands/pretrain_demo.py): --epochs are then its fine-tuning epochs.
    p.add_argument("--pretrain", action="store_true",
                   help="instead: SimMIM pre-training without labels, then fine-tuning on 10%% of the labels vs from scratch")
    from .pretrain_demo import DEFAULT_PRETRAIN_EPOCHS

    p.add_argument("--pretrain-epochs", type=int, help=f"pre-training epochs with --pretrain (default {DEFAULT_PRETRAIN_EPOCHS}; 1 with --quick)")
    p.set_defaults(func=run)


def format_table(teacher_acc1: float, students: dict[str, dict[str, float]], teacher_name: str = "teacher (SmallConvNet)") -> str:
    rows = [
        "| model | CLS head | DIST head | averaged heads |",
        "|---|---:|---:|---:|",
        f"| {teacher_name} | | | {teacher_acc1:.2f} |",
    ]
    for name, acc in students.items():
        rows.append(f"| student, {name} | {acc['cls']:.2f} | {acc['dist']:.2f} | {acc['avg']:.2f} |")
    return "\n".join(rows)


def save_samples(out: Path, seed: int) -> list[Path]:
    """A few held-out digits as PNG files, named after their true label."""
    from ..train.data import build_dataset

    raw = build_dataset("mnist5k", "val")
    step = len(raw) // SAMPLE_COUNT
    paths = []
    for k in range(SAMPLE_COUNT):
        image, label = raw[(seed + k * step) % len(raw)]
        path = out / "samples" / f"sample{k}_true{raw.classes[label]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths


def _train_students(args: argparse.Namespace, labels: dict[str, str], teacher: Any, train_set: Any, val_set: Any, per_class: int,
                    epochs: int, out: Path) -> tuple[Any, dict[str, Any]]:
    """The labels-only and the distilled student, side by side: the distilled one's run result and
    the labels-only one's accuracies, history and seconds; the distilled student is saved to ``out/student``."""
    import dataclasses

    from ..demo.recipe import head_accuracies, student_config, train_student_quietly
    from ..train.checkpointing import save_hf_model
    from ..train.engine import fit

    configs = {
        kind: student_config(str(out / f"student-{kind}"), kind, epochs=epochs, seed=args.seed, num_workers=args.num_workers, progress=True)
        for kind in labels
    }
    configs["hard"] = dataclasses.replace(configs["hard"], labels_per_class=per_class)
    # The two students at once, one process each (the labels-only one in a worker process, quietly;
    # the distilled one here, with its progress bar): on two cores nearly twice as fast as one
    # after the other. Both take the same steps: an epoch of the labels-only student repeats its
    # labelled images as often as the distilled one sees all the images.
    quick_subset = (QUICK_TRAIN_PER_CLASS, QUICK_VAL_PER_CLASS) if args.quick else None
    print(f"training the two students side by side, {epochs} epochs of {len(train_set)} images each "
          "(the one without a teacher in a worker process)")
    run_start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        undistilled = pool.submit(train_student_quietly, configs["none"], quick_subset, per_class, args.threads)
        distilled = fit(configs["hard"], teacher=teacher, train_dataset=train_set, val_dataset=val_set)
        print(f"student, {labels['hard']}: {head_accuracies(distilled.final_metrics)['avg']:.2f}% top-1 (averaged heads) "
              f"after {epochs} epochs ({time.perf_counter() - run_start:.0f} s)")
        # The student is the moving average of its weights (the recipe's EMA), as its accuracies are.
        save_hf_model(distilled.ema_model, out / "student", mean=configs["hard"].mean, std=configs["hard"].std,
                      crop_pct=configs["hard"].crop_pct)
        none = undistilled.result()
    print(f"student, {labels['none']}: {none['accuracies']['avg']:.2f}% top-1 (averaged heads) after {epochs} epochs "
          f"({none['seconds']:.0f} s)")
    return distilled, none


def _show_student(out: Path, seed: int) -> tuple[int, int]:
    """A few held-out digits through ``deit predict`` and ``deit attention`` with the saved student."""
    from ..cli import main as deit_main

    print("\nheld-out digits classified by the distilled student (deit predict):")
    samples = [str(path) for path in save_samples(out, seed)]
    predict_status = deit_main(["predict", *samples, "--model", str(out / "student"), "--top-k", "1"])
    print("\nwhere its [CLS] and [DIST] tokens look (attention rollout, deit attention):")
    attention_status = deit_main(["attention", *samples, "--model", str(out / "student"), "--out", str(out / "attention")])
    return predict_status, attention_status


def run(args: argparse.Namespace) -> int:
    if args.pretrain:
        from .pretrain_demo import run as run_pretrain_demo

        return run_pretrain_demo(args, quick_subset=(QUICK_TRAIN_PER_CLASS, QUICK_VAL_PER_CLASS))
    import torch

    from ..atomic import atomic_write_text
    from ..train.metrics import plot_curves
    from ..demo.recipe import (
        SEMI_EPOCHS, SEMI_LABELS_PER_CLASS, SEMI_TEACHER_EPOCHS, ClassBalancedSubset, head_accuracies, load_data, student_config, train_teacher,
    )

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick_epochs = QUICK_EPOCHS if args.quick else None
    epochs = args.epochs or quick_epochs or SEMI_EPOCHS
    teacher_epochs = args.teacher_epochs or quick_epochs or SEMI_TEACHER_EPOCHS
    per_class = args.labels_per_class or (QUICK_LABELS_PER_CLASS if args.quick else SEMI_LABELS_PER_CLASS)

    train_set, val_set = load_data(student_config("unused", "none"))  # the same data and transforms for every run
    if args.quick:
        train_set, val_set = ClassBalancedSubset(train_set, QUICK_TRAIN_PER_CLASS), ClassBalancedSubset(val_set, QUICK_VAL_PER_CLASS)
    labelled = ClassBalancedSubset(train_set, per_class)
    unlabelled_count = len(train_set) - len(labelled)
    print(f"mnist5k: {len(train_set)} training images, of which {len(labelled)} keep their labels ({per_class} per class) "
          f"and {unlabelled_count} are used without; {len(val_set)} validation images")

    teacher = train_teacher(labelled, val_set, num_classes=len(train_set.classes), output=str(out / "teacher"), epochs=teacher_epochs,
                            seed=args.seed, progress=True)
    teacher_name = f"teacher (SmallConvNet, {len(labelled)} labelled images)"
    print(f"{teacher_name}: {teacher.acc1:.2f}% top-1 after {teacher_epochs} epochs ({teacher.seconds:.0f} s)")

    labels = {"none": f"no distillation, {len(labelled)} labelled images",
              "hard": f"hard distillation, {len(labelled)} labelled + {unlabelled_count} unlabelled images"}
    distilled, none = _train_students(args, labels, teacher.model, train_set, val_set, per_class, epochs, out)
    runs = {labels["none"]: none["accuracies"], labels["hard"]: head_accuracies(distilled.final_metrics)}
    histories = {labels["none"]: none["history"], labels["hard"]: distilled.history}

    table = format_table(teacher.acc1, runs, teacher_name)
    plot_curves(histories, out / "curves.png", title="DeiT student on mnist5k with few labels: without and with the teacher and the unlabelled images")
    print(f"\nvalidation top-1 (%) on mnist5k, the same student and steps with {len(labelled)} labelled images alone and "
          f"with the teacher on all {len(train_set)}")
    print("(without a teacher both heads learn the labels; with one, the DIST head learns the teacher's predictions on every image"
          " and the CLS head the labels where there are labels):\n")
    print(table)
    print(f"\ndistilled student saved to {out / 'student'}; curves in {out / 'curves.png'}")

    predict_status, attention_status = _show_student(out, args.seed)

    elapsed = time.perf_counter() - start
    results = {"teacher_acc1": teacher.acc1, "students": runs, "epochs": epochs, "teacher_epochs": teacher_epochs, "seed": args.seed,
               "quick": args.quick, "train_images": len(train_set), "labelled_images": len(labelled), "val_images": len(val_set),
               "seconds": elapsed}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", table + "\n")
    print(f"\ndemo finished in {elapsed / 60:.1f} min")
    return predict_status or attention_status
