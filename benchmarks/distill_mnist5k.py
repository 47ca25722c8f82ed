"""Student accuracy with no, soft and hard distillation on mnist5k, over seeds and two data regimes.

Same student, same data, same budget for every row of a regime; only the distillation loss
changes. For each regime one convnet teacher (the one ``deit demo`` uses, seed 0) is trained on
that regime's training images and shared by all student seeds, as the paper uses one teacher;
then one student per seed and distillation type. Regimes: ``full`` (the 4,000 training images)
and ``low`` (a fixed, class-balanced 10 % of them, the first 40 of each class, the same for
every seed, with more epochs: see ``LOW_DATA_EPOCHS`` in the recipe); both are validated on the
same 1,000 held-out digits. Runs go ``--jobs`` at a time, one process and one thread each; every
finished run is saved, so ``--reuse`` resumes an interrupted benchmark or merges invocations.

Reports per head mean, standard deviation and standard error, the per-seed values, the paired
differences hard - none and soft - none (same seed, same teacher), the epochs each run needs to
reach 50 % and 90 %, the teacher's disagreement with the labels on augmented training batches,
and a PNG of every run's validation curve.

    .venv/bin/python benchmarks/distill_mnist5k.py --markdown benchmarks/distill_mnist5k.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch
from torch.utils.data import DataLoader, Dataset

from deit.bench.timing import cpu_name
from deit.io import atomic_path, atomic_write_text
from deit.train.engine import fit
from deit.train.mnist5k_recipe import (
    LOW_DATA_EPOCHS, LOW_DATA_PER_CLASS, LOW_DATA_TEACHER_EPOCHS, STUDENT_EPOCHS, TEACHER_EPOCHS, ClassBalancedSubset, describe_recipe,
    head_accuracies, load_data, student_config, train_teacher,
)

KINDS = ("none", "soft", "hard")
NAMES = {"none": "no distillation", "soft": "soft distillation", "hard": "hard distillation"}
HEADS = ("cls", "dist", "avg")
# Per-epoch curves: the weights' (the training trajectory) and their moving average's (the student).
CURVE_KEYS = {"cls": "val_acc1_cls", "dist": "val_acc1_dist", "avg": "val_acc1", "ema_avg": "ema_acc1"}
REGIMES = ("full", "low")


@torch.no_grad()
def disagreement(teacher: torch.nn.Module, dataset: Dataset, seed: int, passes: int = 2) -> float:
    """Share (%) of augmented training images whose teacher argmax is not the label.

    The batches are drawn as the student's are (the training transform, reshuffled); this is the
    extra signal hard distillation can add over the labels.
    """
    teacher.eval()
    wrong = total = 0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the random crops
    for _ in range(passes):
        for images, labels in DataLoader(dataset, batch_size=256, shuffle=True, generator=generator):
            wrong += int((teacher(images).argmax(-1) != labels).sum())
            total += len(labels)
    return 100.0 * wrong / total


def epochs_to_reach(curve: list[float], threshold: float) -> int | None:
    return next((epoch for epoch, acc in enumerate(curve, start=1) if acc >= threshold), None)


def regime_data(regime: str, settings: dict[str, Any]) -> tuple[Dataset, Dataset]:
    train_set, val_set = load_data(student_config("unused", "none"))
    if regime == "low":
        train_set = ClassBalancedSubset(train_set, settings["low_data_per_class"])
    return train_set, val_set


def teacher_file(out: str, regime: str) -> Path:
    return Path(out) / f"teacher-{regime}.safetensors"


def result_file(out: str, regime: str, seed: int | None = None, kind: str | None = None) -> Path:
    return Path(out) / (f"teacher-{regime}.json" if kind is None else f"{regime}-seed{seed}-{kind}.json")


def teacher_job(regime: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The regime's teacher (seed 0, shared by every student seed, as the paper's one teacher is)."""
    from safetensors.torch import save_file

    torch.set_num_threads(settings["threads"])
    train_set, val_set = regime_data(regime, settings)
    epochs = settings["teacher_epochs"] if regime == "full" else settings["low_data_teacher_epochs"]
    teacher = train_teacher(train_set, val_set, num_classes=len(train_set.classes), epochs=epochs, seed=0)
    with atomic_path(teacher_file(settings["out"], regime)) as tmp:
        save_file(teacher.model.state_dict(), str(tmp))
    job = {"regime": regime, "settings": settings, "epochs": epochs, "train_images": len(train_set), "acc1": teacher.acc1,
           "seconds": teacher.seconds, "label_disagreement": disagreement(teacher.model, train_set, seed=0)}
    print(f"{regime} data: teacher {teacher.acc1:.2f}% ({teacher.seconds:.0f} s), disagrees with "
          f"{job['label_disagreement']:.2f}% of the augmented training labels", flush=True)
    return job


def student_job(regime: str, seed: int, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One student run; the DIST head learns from the regime's saved teacher unless ``kind`` is none."""
    from safetensors.torch import load_file

    from deit.train.teacher import SmallConvNet

    torch.set_num_threads(settings["threads"])
    train_set, val_set = regime_data(regime, settings)
    teacher = None
    if kind != "none":
        teacher = SmallConvNet(num_classes=len(train_set.classes), in_channels=3)
        teacher.load_state_dict(load_file(str(teacher_file(settings["out"], regime))))
        teacher.eval()
    epochs = settings["epochs"] if regime == "full" else settings["low_data_epochs"]
    start = time.perf_counter()
    config = student_config(f"{settings['out']}/{regime}-seed{seed}-{kind}", kind, epochs=epochs, seed=seed, num_workers=settings["num_workers"])
    result = fit(config, teacher=teacher, train_dataset=train_set, val_dataset=val_set)
    job = {"regime": regime, "seed": seed, "kind": kind, "settings": settings, "epochs": epochs, "train_images": len(train_set),
           "final": head_accuracies(result.final_metrics),
           "curves": {head: [entry.get(key, math.nan) for entry in result.history] for head, key in CURVE_KEYS.items()},
           "seconds": time.perf_counter() - start}
    print(f"{regime} data, seed {seed}: student, {NAMES[kind]}: {job['final']['avg']:.2f}% (averaged heads), {job['seconds']:.0f} s", flush=True)
    return job


def run_all(tasks: list[tuple[Any, tuple[Any, ...], Path]], jobs: int) -> None:
    """Run ``function(*arguments)`` for each task, ``jobs`` processes at a time, saving each result as it comes."""
    def save(path: Path, job: dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(job, indent=1) + "\n")

    if jobs <= 1:
        for function, arguments, path in tasks:
            save(path, function(*arguments))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [(pool.submit(function, *arguments), path) for function, arguments, path in tasks]
        for future, path in futures:
            save(path, future.result())


# ------------------------------------------------------------------------------ report
def mean_sd_se(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, sd, sd / math.sqrt(len(values))


def fmt(values: list[float]) -> str:
    mean, sd, se = mean_sd_se(values)
    return f"{mean:.2f} ± {sd:.2f} (SE {se:.2f})"


def fmt_epochs(values: list[int | None]) -> str:
    return ", ".join("-" if v is None else str(v) for v in values)


def regime_report(regime: str, teacher: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """The tables of one regime; ``runs[kind]`` lists that kind's runs in seed order."""
    seeds = [run["seed"] for run in runs["none"]]
    kinds = [kind for kind in KINDS if kind in runs]
    final = {kind: {head: [run["final"][head] for run in runs[kind]] for head in HEADS} for kind in kinds}
    lines = [
        f"### {'Full data' if regime == 'full' else 'Low data'}: {teacher['train_images']} training images",
        "",
        f"Student: {runs['none'][0]['epochs']} epochs. Teacher: {teacher['epochs']} epochs on the same images, seed 0, "
        f"shared by every student seed. Student seeds {', '.join(map(str, seeds))}. Validation top-1 (%) on the 1,000 "
        "held-out digits after the last epoch: mean ± standard deviation (standard error of the mean).",
        "",
        "| model | CLS head | DIST head | averaged heads | per seed (averaged heads) |",
        "|---|---:|---:|---:|---|",
        f"| teacher (SmallConvNet) | | | {teacher['acc1']:.2f} | |",
    ]
    for kind in kinds:
        acc = final[kind]
        lines.append(f"| student, {NAMES[kind]} | {fmt(acc['cls'])} | {fmt(acc['dist'])} | {fmt(acc['avg'])} | "
                     f"{', '.join(f'{v:.1f}' for v in acc['avg'])} |")
    lines += [
        "",
        "Paired differences (same seed: same initialisation and data order), percentage points: mean ± standard error "
        "of the per-seed differences; **beyond 2 SE** marks |mean| > 2 SE.",
        "",
        "| comparison | CLS head | DIST head | averaged heads | per seed (averaged heads) |",
        "|---|---:|---:|---:|---|",
    ]
    for kind in (k for k in ("hard", "soft") if k in kinds):
        cells = []
        for head in HEADS:
            mean, _, se = mean_sd_se([a - b for a, b in zip(final[kind][head], final["none"][head])])
            cells.append(f"{mean:+.2f} ± {se:.2f}{' **beyond 2 SE**' if abs(mean) > 2 * se else ''}")
        per_seed = [a - b for a, b in zip(final[kind]["avg"], final["none"]["avg"])]
        lines.append(f"| {kind} - none | {' | '.join(cells)} | {', '.join(f'{v:+.1f}' for v in per_seed)} |")
    lines += [
        "",
        "Epochs to reach 50 % and 90 % (averaged heads), per seed (`-`: not reached): of the weights being trained "
        "and of their moving average (the student the accuracies above are of); seconds per run.",
        "",
        "| student | 50 % (weights) | 90 % (weights) | 50 % (average) | 90 % (average) | seconds per run (mean) |",
        "|---|---|---|---|---|---:|",
    ]
    for kind in kinds:
        curves = [run["curves"]["avg"] for run in runs[kind]]
        averaged = [run["curves"].get("ema_avg", []) for run in runs[kind]]
        lines.append(f"| {NAMES[kind]} | {fmt_epochs([epochs_to_reach(c, 50) for c in curves])} | "
                     f"{fmt_epochs([epochs_to_reach(c, 90) for c in curves])} | {fmt_epochs([epochs_to_reach(c, 50) for c in averaged])} | "
                     f"{fmt_epochs([epochs_to_reach(c, 90) for c in averaged])} | {statistics.mean(r['seconds'] for r in runs[kind]):.0f} |")
    lines += [
        "",
        f"The teacher disagrees with the label on {teacher['label_disagreement']:.2f} % of the augmented training images "
        "(two passes over the training images with the training transform): the share of targets where hard "
        "distillation tells the student something other than the label.",
    ]
    return "\n".join(lines)


def plot_all(results: dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]], path: Path) -> None:
    """Validation top-1 (averaged heads) per epoch of every run: one panel per regime, one colour per kind."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * len(results), 4.5), dpi=100)
    axes_list = figure.subplots(1, len(results), squeeze=False)[0]
    for axes, (regime, (teacher, runs)) in zip(axes_list, results.items()):
        for colour, kind in enumerate(KINDS):
            for index, run in enumerate(runs.get(kind, [])):
                curve = run["curves"]["avg"]
                axes.plot(range(1, len(curve) + 1), curve, color=f"C{colour}", alpha=0.6, linewidth=1, marker=".", markersize=3,
                          label=NAMES[kind] if index == 0 else None)
        axes.axhline(teacher["acc1"], color="black", linestyle=":", linewidth=1, label="teacher")
        axes.set_title(f"{regime} data: {teacher['train_images']} training images, {len(runs['none'])} seeds per kind")
        axes.set_xlabel("epoch")
        axes.set_ylabel("validation top-1 (%), averaged heads")
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--low-data-seeds", type=int, nargs="+", help="student seeds of the low-data regime (default: --seeds)")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="distillation types (none is needed)")
    parser.add_argument("--epochs", type=int, default=STUDENT_EPOCHS, help="student epochs per full-data run")
    parser.add_argument("--low-data-epochs", type=int, default=LOW_DATA_EPOCHS, help="student epochs per low-data run")
    parser.add_argument("--low-data-per-class", type=int, default=LOW_DATA_PER_CLASS, help="training images per class, low-data regime")
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS, help="teacher epochs, full data")
    parser.add_argument("--low-data-teacher-epochs", type=int, default=LOW_DATA_TEACHER_EPOCHS, help="teacher epochs, low data")
    parser.add_argument("--out", default="runs/bench-distill-mnist5k", help="where the runs and the per-run results are written")
    parser.add_argument("--markdown", help="also write the report with the command to this file")
    parser.add_argument("--plot", help="PNG of all validation curves (default: OUT/curves.png)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads per run (default 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per run (default 0: the jobs fill the cores)")
    parser.add_argument("--reuse", action="store_true", help="keep saved results of runs with the same settings (to resume or merge)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the saved runs (a kind is shown for a regime when all its seeds are saved)")
    args = parser.parse_args()
    if "none" not in args.kinds:
        parser.error("--kinds must include none: every comparison is against it")

    settings = {"epochs": args.epochs, "low_data_epochs": args.low_data_epochs, "low_data_per_class": args.low_data_per_class,
                "teacher_epochs": args.teacher_epochs, "low_data_teacher_epochs": args.low_data_teacher_epochs,
                "threads": args.threads, "out": args.out}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def missing(task: tuple[Any, tuple[Any, ...], Path]) -> bool:
        """Not saved yet, or saved with other settings (the settings are each task's last argument)."""
        path = task[2]
        return not (args.reuse and path.is_file() and json.loads(path.read_text())["settings"] == task[1][-1])

    teachers = [(teacher_job, (regime, settings), result_file(args.out, regime)) for regime in args.regimes]
    student_settings = {**settings, "num_workers": args.num_workers}
    seeds = {"full": args.seeds, "low": args.low_data_seeds or args.seeds}
    students = [(student_job, (regime, seed, kind, student_settings), result_file(args.out, regime, seed, kind))
                for regime in args.regimes for seed in seeds[regime] for kind in args.kinds]
    if not args.report_only:
        run_all([task for task in teachers if missing(task)], args.jobs)
        run_all([task for task in students if missing(task)], args.jobs)
    elapsed = time.perf_counter() - start

    def load(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())

    def saved_kinds(regime: str) -> list[str]:
        return [kind for kind in args.kinds if all(result_file(args.out, regime, seed, kind).is_file() for seed in seeds[regime])]

    results = {
        regime: (load(result_file(args.out, regime)),
                 {kind: [load(result_file(args.out, regime, seed, kind)) for seed in seeds[regime]] for kind in saved_kinds(regime)})
        for regime in args.regimes
    }
    run_minutes = sum(teacher["seconds"] + sum(run["seconds"] for kind_runs in runs.values() for run in kind_runs)
                      for teacher, runs in results.values()) / 60
    plot = Path(args.plot or Path(args.out) / "curves.png")
    plot_all(results, plot)
    report = "\n\n".join(regime_report(regime, *result) for regime, result in results.items())
    print("\n" + report + f"\n\n{elapsed / 60:.1f} min; curves in {plot}")
    if args.markdown:
        command = " ".join([".venv/bin/python", "benchmarks/distill_mnist5k.py", *sys.argv[1:]])
        machine = (f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} logical cores), {args.jobs} run(s) in parallel with "
                   f"{args.threads} torch thread(s) each, torch {torch.__version__}, Python {platform.python_version()}")
        text = (
            "# Distillation on mnist5k: none vs soft vs hard\n\n"
            f"Command: `{command}`\n\nMachine: {machine}; wall time {elapsed / 60:.1f} min (the runs themselves: "
            f"{run_minutes:.0f} min, summed over runs{', some of them saved by earlier invocations' if args.reuse else ''}). "
            f"Curves: `{plot}`.\n\n"
            f"Recipe ({Path('src/deit/train/mnist5k_recipe.py')}): {describe_recipe()}.\n\n"
            "In the no-distillation rows both heads learn the labels (the same architecture and cost as the distilled runs); "
            "with a teacher the DIST head learns the teacher's predictions (hard: its argmax; soft: its temperature-softened "
            "distribution, tau = 1, alpha = 0.5).\n\n"
            f"{report}\n"
        )
        atomic_write_text(Path(args.markdown), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
