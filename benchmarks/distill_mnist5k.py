"""Where distillation through the DIST token pays on mnist5k: few labels and many unlabelled images.

Label budgets of N labelled images per class (``--budgets``, of the 400 per class of the training
split; the first N of each class, the same for every seed). Per budget one convnet teacher (the
demo's, seed 0) is trained on the labelled images only and shared by all student seeds, as the
paper uses one teacher. Students (the demo's small DeiT, the same schedule for all: ``--epochs``
passes of 4,000 images, so every student takes the same optimizer steps and sees as many images):

- ``none``: the labels only (the labelled images repeated to 4,000 per epoch), both heads on them;
- ``hard-labelled`` / ``soft-labelled``: the DeiT loss on the labelled images only (repeated);
- ``hard`` / ``soft``: the product's partly labelled training (``deit train --labels-per-class N``
  with a teacher): the other training images join without their labels and the DIST head learns
  the teacher on every image (one pass over all 4,000 per epoch, labelled and unlabelled mixed);
  ``soft`` averages the KL per image, the default there; ``soft-mean`` over images x classes, as
  the authors' loss does;
- ``hard-cls``: as ``hard``, and the CLS head learns the teacher's hard label on unlabelled images;
- ``no-token``: the paper's ablation: a plain ViT (no distillation token, otherwise the same
  student) whose one class token learns the labels and the teacher's hard labels, on the same
  partly labelled data;
- ``timm-hard`` / ``timm-soft``: timm's ``VisionTransformerDistilled`` of the same size trained by
  timm's ``TokenDistillationTask`` in a minimal loop on the ``*-labelled`` data (timm has no
  unlabelled mode), with the same teacher, augmentation, optimiser, schedule and weight average.

``--full-data`` adds the label-breaking experiment: all 4,000 labels, strong crops and
mixup/cutmix, none vs hard, with the full-data teacher.

Reports per head mean, SD and SE, the paired differences to ``none`` (same seed) per head, the
teacher's accuracy on the augmented unlabelled images, training images/s, and a PNG of accuracy
vs labels per method with the teacher's line. Runs go ``--jobs`` at a time, one process and one
thread each; every finished run is saved, so ``--reuse`` resumes or merges invocations.

``--speed ROUNDS`` times our engine against timm's task alone (training images/s of ``hard-labelled``
and ``timm-hard``, 2 epochs each, alternating, in this one process on ``--threads``; the teacher of
an earlier run at 40 labels per class in ``--out``): the images/s of runs side by side measure
their neighbour's load as much as their own code.

    .venv/bin/python benchmarks/distill_mnist5k.py --markdown benchmarks/distill_mnist5k.md
    .venv/bin/python benchmarks/distill_mnist5k.py --out runs/bench25 --speed 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

try:
    import deit  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from deit.bench.timing import cpu_name
from deit.atomic import atomic_path, atomic_write_text
from deit.train.engine import Trainer, fit, run_trainer
from deit.train.recipe import TrainConfig
from deit.demo.recipe import (
    SEMI_EPOCHS, SEMI_TEACHER_EPOCHS, STUDENT_EPOCHS, TEACHER_EPOCHS, ClassBalancedSubset, describe_recipe, head_accuracies, labels_only_data,
    load_data, student_config, train_teacher,
)

HEADS = ("cls", "dist", "avg")
METHODS = {
    "none": "labels only",
    "hard-labelled": "hard distillation, labelled images only",
    "soft-labelled": "soft distillation, labelled images only",
    "hard": "hard distillation + unlabelled images",
    "soft": "soft distillation + unlabelled images (the KL per image, the default there)",
    "soft-mean": "soft distillation + unlabelled images, the KL averaged over batch x classes (the authors' scaling)",
    "hard-cls": "hard distillation + unlabelled images, CLS head on the teacher's labels too",
    "no-token": "no distillation token: teacher's hard labels on a plain ViT's class token + unlabelled images",
    "timm-hard": "timm TokenDistillationTask, hard, labelled images only",
    "timm-soft": "timm TokenDistillationTask, soft, labelled images only",
}
FULL_METHODS = ("none", "hard")
FULL_LABELS = {"hard": "hard distillation (every image labelled)"}  # no unlabelled images at the full budget


def method_label(budget: int | str, method: str) -> str:
    return FULL_LABELS.get(method, METHODS[method]) if budget == "full" else METHODS[method]
# Paired comparisons beside "method - none": the CLS head on the teacher's labels, the token, timm.
COMPARISONS = (("soft", "soft-mean"), ("hard-cls", "hard"), ("no-token", "hard-cls"), ("timm-hard", "hard-labelled"),
               ("timm-soft", "soft-labelled"))
IMAGES_PER_EPOCH = 4000  # the training split: what one pass over labelled + unlabelled images is
# The label-breaking augmentation of the full-data experiment: crops down to a quarter of the digit
# (the 0.08 of ImageNet leaves a few strokes of a 28 px digit) and the recipe's mixup/cutmix.
STRONG = dict(scale=(0.25, 1.0), mixup=0.8, cutmix=1.0)


class ClassTokenTrainer(Trainer):
    """The ablation: a plain ViT's one head learns the labels and the teacher (no DIST token)."""

    distil_class_token = True


DISTILLATION = {"none": "none", "hard-labelled": "hard", "soft-labelled": "soft", "hard": "hard", "soft": "soft", "soft-mean": "soft", "hard-cls": "hard",
                "no-token": "hard", "timm-hard": "hard", "timm-soft": "soft"}
PARTLY_LABELLED = ("hard", "soft", "soft-mean", "hard-cls", "no-token")  # the product's labels_per_class with the unlabelled pool


def method_config(out: str, budget: int | str, method: str, seed: int, epochs: int) -> TrainConfig:
    config = student_config(f"{out}/{budget}-{method}-seed{seed}", DISTILLATION[method], epochs=epochs, seed=seed)
    if budget == "full":
        return dataclasses.replace(config, **STRONG)
    if method in PARTLY_LABELLED:
        # hard/soft: the DIST head alone learns the unlabelled images; hard-cls: the CLS head too.
        # The one head of the no-token ablation learns the teacher's labels there.
        config = dataclasses.replace(config, labels_per_class=budget, unlabeled_cls_teacher=method in ("hard-cls", "no-token"))
    if method == "no-token":
        config = dataclasses.replace(config, model="deit-tiny-patch16-224")
    if method == "soft-mean":
        config = dataclasses.replace(config, distillation_kl_reduction="mean")
    return config


def labelled_data(budget: int | str) -> tuple[Dataset, Dataset, Dataset]:
    """(labelled images repeated to IMAGES_PER_EPOCH, validation images, the other training images)."""
    train_set, val_set = load_data(student_config("unused", "none"))
    if budget == "full":
        return train_set, val_set, train_set
    labelled = ClassBalancedSubset(train_set, budget)
    rest = Subset(train_set, sorted(set(range(len(train_set))) - set(labelled.indices)))
    return labels_only_data(train_set, budget), val_set, rest


def teacher_file(out: str, budget: int | str) -> Path:
    return Path(out) / f"teacher-{budget}.safetensors"


def result_file(out: str, budget: int | str, method: str | None = None, seed: int | None = None) -> Path:
    return Path(out) / (f"teacher-{budget}.json" if method is None else f"{budget}-{method}-seed{seed}.json")


def load_teacher(out: str, budget: int | str) -> torch.nn.Module:
    from safetensors.torch import load_file

    from deit.demo.teacher import SmallConvNet

    teacher = SmallConvNet(num_classes=10, in_channels=3)
    teacher.load_state_dict(load_file(str(teacher_file(out, budget))))
    return teacher.eval()


@torch.no_grad()
def teacher_agreement(teacher: torch.nn.Module, dataset: Dataset, seed: int, mix: bool = False, passes: int = 2) -> float:
    """Share (%) of augmented views whose teacher argmax is the label (with ``mix``: the mixed
    target's larger share, after the recipe's mixup/cutmix of the batch with its reverse)."""
    from deit.train.transforms import MixupCutmix

    mixer = MixupCutmix(10, STRONG["mixup"], STRONG["cutmix"], label_smoothing=0.0) if mix else None
    agree = total = 0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(passes):
        for images, labels in DataLoader(dataset, batch_size=16, shuffle=True, generator=generator, drop_last=True):
            if mixer is not None:
                images, targets = mixer(images, labels)
                labels = targets.argmax(-1)
            agree += int((teacher(images).argmax(-1) == labels).sum())
            total += len(labels)
    return 100.0 * agree / total


def teacher_job(budget: int | str, settings: dict[str, Any]) -> dict[str, Any]:
    """The budget's teacher: trained on the labelled images only (seed 0, shared by every student seed)."""
    from safetensors.torch import save_file

    torch.set_num_threads(settings["threads"])
    train_set, val_set = load_data(student_config("unused", "none"))
    labelled = train_set if budget == "full" else ClassBalancedSubset(train_set, budget)
    # The same images seen (and steps) at every budget: the epochs of the 40-per-class teacher, scaled.
    epochs = settings["full_teacher_epochs"] if budget == "full" else round(settings["teacher_epochs"] * 40 / budget)
    teacher = train_teacher(labelled, val_set, num_classes=10, output=f"{settings['out']}/teacher-{budget}", epochs=epochs, seed=0)
    with atomic_path(teacher_file(settings["out"], budget)) as tmp:
        save_file(teacher.model.state_dict(), str(tmp))
    _, _, rest = labelled_data(budget)
    job = {"budget": budget, "settings": settings, "epochs": epochs, "labelled_images": len(labelled), "acc1": teacher.acc1,
           "seconds": teacher.seconds, "unlabelled_agreement": teacher_agreement(teacher.model, rest, seed=0)}
    if budget == "full":
        strong = load_data(dataclasses.replace(student_config("unused", "none"), scale=STRONG["scale"]))[0]
        job["strong_agreement"] = teacher_agreement(teacher.model, strong, seed=0, mix=True)
    print(f"{budget} labels per class: teacher {teacher.acc1:.2f}% ({teacher.seconds:.0f} s), right on "
          f"{job['unlabelled_agreement']:.2f}% of the augmented other training images", flush=True)
    return job


def student_job(budget: int | str, method: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One student run of ``method`` (see the module docstring)."""
    torch.set_num_threads(settings["threads"])
    config = method_config(settings["out"], budget, method, seed, settings["full_epochs" if budget == "full" else "epochs"])
    teacher = None if method == "none" else load_teacher(settings["out"], budget)
    start = time.perf_counter()
    if method.startswith("timm-"):
        job = timm_run(config, teacher, *labelled_data(budget)[:2])
    else:
        if budget == "full":
            train_set, val_set = load_data(config)  # all labels, the strong crops of the config
            result = fit(config, teacher=teacher, train_dataset=train_set, val_dataset=val_set)
        elif method == "no-token":
            result = run_trainer(ClassTokenTrainer, dataclasses.replace(config, teacher="<module>"), teacher=teacher)
        elif method in PARTLY_LABELLED:  # the product's partly labelled data (labels_per_class)
            result = fit(config, teacher=teacher)
        else:
            train_set, val_set, _ = labelled_data(budget)
            result = fit(config, teacher=teacher, train_dataset=train_set, val_dataset=val_set)
        job = {"final": head_accuracies(result.final_metrics), "curve": [entry.get("ema_acc1", math.nan) for entry in result.history],
               "images_per_s": statistics.mean(entry["train_images_per_s"] for entry in result.history)}
    job.update(budget=budget, method=method, seed=seed, settings=settings, seconds=time.perf_counter() - start)
    print(f"{budget} labels per class, seed {seed}: {method_label(budget, method)}: {job['final']['avg']:.2f}% (averaged heads), "
          f"{job['seconds']:.0f} s", flush=True)
    return job


def timm_run(config: Any, teacher: torch.nn.Module, train_set: Dataset, val_set: Dataset) -> dict[str, Any]:
    """timm's TokenDistillationTask in a minimal loop: our recipe's optimiser, schedule and weight
    average on timm's distilled ViT of our student's size; timm's own loss (label smoothing 0.1,
    task and distillation weights 1 - alpha and alpha)."""
    import timm
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.task import TokenDistillationTask
    from timm.utils import ModelEmaV3

    from deit.train.epoch_order import seed_everything
    from deit.train.optim import WarmupCosineSchedule, scaled_lr

    seed_everything(config.seed)
    student = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, img_size=config.image_size, patch_size=config.patch_size,
        embed_dim=config.hidden_size, depth=config.depth, num_heads=config.heads, mlp_ratio=config.mlp_ratio, drop_path_rate=config.drop_path,
        pretrained_cfg_overlay=dict(mean=config.mean, std=config.std),
    )
    teacher.pretrained_cfg = {"mean": config.mean, "std": config.std}  # the same normalisation: timm passes the batch as is
    task = TokenDistillationTask(
        student, teacher, criterion=LabelSmoothingCrossEntropy(config.smoothing), distill_type=config.distillation_type,
        task_loss_weight=1 - config.distillation_alpha, distill_loss_weight=config.distillation_alpha, temperature=config.distillation_tau,
        verbose=False,
    )
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    optimizer = create_optimizer_v2(student, "adamw", lr=scaled_lr(config.lr, config.batch_size), weight_decay=config.weight_decay)
    schedule = WarmupCosineSchedule(optimizer, peak_lr=scaled_lr(config.lr, config.batch_size), epochs=config.epochs,
                                    steps_per_epoch=len(loader), warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                    min_lr=config.min_lr, per_step=config.lr_per_step)
    ema = ModelEmaV3(student, decay=config.model_ema_decay)
    step, train_seconds, images, curve = 0, 0.0, 0, []
    for _ in range(config.epochs):
        task.train()
        tick = time.perf_counter()
        for batch, labels in loader:
            schedule.apply(step)
            loss = task(batch, labels)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(student, step=step)
            step += 1
            images += len(labels)
        train_seconds += time.perf_counter() - tick
        curve.append(timm_head_accuracies(ema.module, val_set)["avg"])
    return {"final": timm_head_accuracies(ema.module, val_set), "curve": curve, "images_per_s": images / train_seconds}


@torch.no_grad()
def timm_head_accuracies(model: torch.nn.Module, val_set: Dataset) -> dict[str, float]:
    model.eval()
    correct = dict.fromkeys(HEADS, 0)
    for images, labels in DataLoader(val_set, batch_size=256):
        tokens = model.forward_features(images)
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        for head, logits in (("cls", cls), ("dist", dist), ("avg", (cls + dist) / 2)):
            correct[head] += int((logits.argmax(-1) == labels).sum())
    return {head: 100.0 * n / len(val_set) for head, n in correct.items()}


def speed_comparison(out: str, rounds: int, threads: int) -> int:
    """Training images/s of our engine and of timm's TokenDistillationTask on the same student,
    teacher and data (hard distillation, 40 labelled images per class), runs alternating."""
    speeds: dict[str, list[float]] = {"hard-labelled": [], "timm-hard": []}
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(teacher_file(out, 40), teacher_file(folder, 40))
        settings = {"epochs": 2, "full_epochs": STUDENT_EPOCHS, "teacher_epochs": SEMI_TEACHER_EPOCHS,
                    "full_teacher_epochs": TEACHER_EPOCHS, "threads": threads, "out": folder}
        for r in range(rounds):
            for method in list(speeds)[:: 1 if r % 2 == 0 else -1]:
                shutil.rmtree(Path(folder) / f"40-{method}-seed0", ignore_errors=True)
                speeds[method].append(student_job(40, method, 0, settings)["images_per_s"])
    print(f"\n{cpu_name()}, {threads} torch thread(s), {rounds} runs of 2 epochs each, alternating; training images/s (best, all):")
    for method, values in speeds.items():
        print(f"- {METHODS[method]}: {max(values):.0f} ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"- ours / timm (best): {max(speeds['hard-labelled']) / max(speeds['timm-hard']):.2f}x")
    return 0


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
    if any(math.isnan(v) for v in values):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    mean, sd, se = mean_sd_se(values)
    return f"{mean:.2f} ± {sd:.2f} (SE {se:.2f})"


def student_epochs(budget: int | str, runs: dict[str, list[dict[str, Any]]]) -> str:
    """The student epochs of the saved runs (several, comma-separated, if invocations differed)."""
    key = "full_epochs" if budget == "full" else "epochs"
    return ", ".join(str(e) for e in sorted({run["settings"][key] for method_runs in runs.values() for run in method_runs}))


def budget_report(budget: int | str, teacher: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """The tables of one budget; ``runs[method]`` lists that method's runs in seed order."""
    title = "All 4,000 labels, label-breaking augmentation" if budget == "full" else f"{budget} labels per class ({10 * budget} labelled images)"
    lines = [
        f"### {title}",
        "",
        f"Teacher: {teacher['epochs']} epochs on the {teacher['labelled_images']} labelled images, seed 0: {teacher['acc1']:.2f} %; "
        f"right on {teacher['unlabelled_agreement']:.2f} % of the augmented views of the "
        f"{'training' if budget == 'full' else 'other (unlabelled)'} images"
        + (f", and its argmax is the larger label of {teacher['strong_agreement']:.2f} % of the strongly augmented, mixed views "
           f"(disagreement {100 - teacher['strong_agreement']:.2f} %)" if "strong_agreement" in teacher else "")
        + f". Students: {student_epochs(budget, runs)} epochs of {IMAGES_PER_EPOCH} images. Validation top-1 (%) on the 1,000 "
        "held-out digits after the last epoch, of the weights' moving average: mean ± SD (SE).",
        "",
        "| method | seeds | CLS head | DIST head | averaged heads | per seed (averaged) | images/s | s per run |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        f"| teacher (SmallConvNet) | 1 | | | {teacher['acc1']:.2f} | | | {teacher['seconds']:.0f} |",
    ]
    for method, method_runs in runs.items():
        acc = {head: [run["final"][head] for run in method_runs] for head in HEADS}
        lines.append(f"| {method_label(budget, method)} | {len(method_runs)} | {fmt(acc['cls'])} | {fmt(acc['dist'])} | {fmt(acc['avg'])} | "
                     f"{', '.join(f'{v:.1f}' for v in acc['avg'])} | {statistics.mean(r['images_per_s'] for r in method_runs):.0f} | "
                     f"{statistics.mean(r['seconds'] for r in method_runs):.0f} |")
    lines += ["", "Paired differences (same seeds), points: mean ± SE; **beyond 2 SE** marks |mean| > 2 SE. The last column: "
              "the share of the baseline's gap to the teacher that the method closes (averaged heads).", "",
              "| comparison | seeds | CLS head | DIST head | averaged heads | of the gap to the teacher |", "|---|---:|---:|---:|---:|---:|"]
    comparisons = [(method, "none") for method in runs if method != "none"] + [pair for pair in COMPARISONS if pair[1] in runs]
    for method, baseline in comparisons:
        base = {run["seed"]: run for run in runs.get(baseline, [])}
        paired = [run for run in runs.get(method, []) if run["seed"] in base]
        if len(paired) < 2:
            continue
        cells = []
        for head in HEADS:
            diffs = [run["final"][head] - base[run["seed"]]["final"][head] for run in paired]
            if any(math.isnan(d) for d in diffs):
                cells.append("-")
                continue
            mean, _, se = mean_sd_se(diffs)
            cells.append(f"{mean:+.2f} ± {se:.2f}{' **beyond 2 SE**' if abs(mean) > 2 * se else ''}")
        gain = statistics.mean(run["final"]["avg"] - base[run["seed"]]["final"]["avg"] for run in paired)
        gap = teacher["acc1"] - statistics.mean(base[run["seed"]]["final"]["avg"] for run in paired)
        lines.append(f"| {method} − {baseline} | {len(paired)} | {' | '.join(cells)} | {100 * gain / gap:.0f} % |")
    return "\n".join(lines)


def plot_budgets(results: dict[Any, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]], path: Path) -> None:
    """Accuracy (averaged heads, mean ± SE over seeds) vs labelled images per class, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    budgets = sorted(b for b in results if b != "full")
    figure = Figure(figsize=(12, 5.5), dpi=100)
    axes = figure.subplots()
    axes.plot(budgets, [results[b][0]["acc1"] for b in budgets], color="black", linestyle=":", marker="s", label="teacher (convnet, same labels)")
    for colour, method in enumerate(METHODS):
        points = [(b, mean_sd_se([r["final"]["avg"] for r in results[b][1][method]])) for b in budgets if len(results[b][1].get(method, [])) >= 2]
        if points:
            axes.errorbar([b for b, _ in points], [m for _, (m, _, _) in points], yerr=[se for _, (_, _, se) in points], color=f"C{colour}",
                          marker="o", capsize=3, label=METHODS[method])
    axes.set_xscale("log")
    axes.set_xticks(budgets, [str(b) for b in budgets])
    axes.set_xlabel("labelled images per class (of 400; the rest unlabelled)")
    axes.set_ylabel("validation top-1 (%), averaged heads")
    axes.set_title("DeiT student on mnist5k: labels only vs distillation with the unlabelled images")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: no point hidden
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="*", default=[10, 40, 100], help="labelled images per class")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--full-data", action="store_true", help="also the label-breaking experiment on all 4,000 labels (none vs hard)")
    parser.add_argument("--epochs", type=int, default=SEMI_EPOCHS, help=f"student epochs of {IMAGES_PER_EPOCH} images")
    parser.add_argument("--full-epochs", type=int, default=STUDENT_EPOCHS, help="student epochs of the full-data experiment")
    parser.add_argument("--teacher-epochs", type=int, default=SEMI_TEACHER_EPOCHS,
                        help="teacher epochs on 40 labelled images per class (other budgets: scaled to as many images seen)")
    parser.add_argument("--full-teacher-epochs", type=int, default=TEACHER_EPOCHS, help="teacher epochs on all 4,000 labels")
    parser.add_argument("--out", default="runs/bench-distill-mnist5k", help="where the runs and the per-run results are written")
    parser.add_argument("--markdown", help="also write the report with the command to this file")
    parser.add_argument("--plot", help="PNG of accuracy vs labels (default: OUT/budgets.png)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads per run (default 1)")
    parser.add_argument("--reuse", action="store_true", help="keep saved results of runs with the same settings (to resume or merge)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the saved runs")
    parser.add_argument("--speed", type=int, metavar="ROUNDS", help="only time ours against timm's task, ROUNDS alternating runs each")
    args = parser.parse_args()
    if args.speed:
        return speed_comparison(args.out, args.speed, args.threads)

    settings = {"epochs": args.epochs, "full_epochs": args.full_epochs, "teacher_epochs": args.teacher_epochs, "full_teacher_epochs": args.full_teacher_epochs,
                "threads": args.threads, "out": args.out}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    budgets: list[int | str] = [*args.budgets, *(["full"] if args.full_data else [])]

    def methods(budget: int | str) -> list[str]:
        return [m for m in args.methods if m in FULL_METHODS] if budget == "full" else args.methods

    def missing(task: tuple[Any, tuple[Any, ...], Path]) -> bool:
        function, arguments, path = task
        if not (args.reuse and path.is_file()):
            return True
        saved, wanted = json.loads(path.read_text())["settings"], arguments[-1]
        if function is teacher_job:  # a teacher does not depend on its students' epochs
            keys = ("teacher_epochs", "full_teacher_epochs", "threads")
            saved, wanted = ({k: s.get(k) for k in keys} for s in (saved, wanted))
        return saved != wanted

    teachers = [(teacher_job, (budget, settings), result_file(args.out, budget)) for budget in budgets]
    # Seed-major order: an interrupted benchmark has every method at the first seeds.
    students = [(student_job, (budget, method, seed, settings), result_file(args.out, budget, method, seed))
                for seed in args.seeds for budget in budgets for method in methods(budget)]
    if not args.report_only:
        run_all([task for task in teachers if missing(task)], args.jobs)
        run_all([task for task in students if missing(task)], args.jobs)
    elapsed = time.perf_counter() - start

    def load(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())

    results = {}
    for budget in budgets:
        if not result_file(args.out, budget).is_file():
            continue
        runs = {method: [load(result_file(args.out, budget, method, seed)) for seed in args.seeds
                         if result_file(args.out, budget, method, seed).is_file()] for method in methods(budget)}
        results[budget] = (load(result_file(args.out, budget)), {m: r for m, r in runs.items() if r})
    run_minutes = sum(t["seconds"] + sum(r["seconds"] for rs in runs.values() for r in rs) for t, runs in results.values()) / 60
    plot = Path(args.plot or Path(args.out) / "budgets.png")
    plot_budgets(results, plot)
    report = "\n\n".join(budget_report(budget, *result) for budget, result in results.items())
    print("\n" + report + f"\n\n{elapsed / 60:.1f} min; accuracy vs labels in {plot}")
    if args.markdown:
        command = " ".join([".venv/bin/python", "benchmarks/distill_mnist5k.py", *sys.argv[1:]])
        machine = (f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} logical cores), {args.jobs} run(s) in parallel with "
                   f"{args.threads} torch thread(s) each, torch {torch.__version__}, Python {platform.python_version()}")
        text = (
            "# Distillation on mnist5k with few labels and the unlabelled images\n\n"
            f"Command: `{command}`\n\nMachine: {machine}; wall time {elapsed / 60:.1f} min (the runs themselves: "
            f"{run_minutes:.0f} min, summed over runs{', some of them saved by earlier invocations' if args.reuse else ''}). "
            f"Accuracy vs labels: `{plot}`.\n\n"
            f"Recipe ({Path('src/deit/demo/recipe.py')}): {describe_recipe(teacher_epochs=args.teacher_epochs)} (at 40 labels per class). Every student: {args.epochs} epochs of "
            f"{IMAGES_PER_EPOCH} images (the labelled images repeated where a method uses no others); teacher "
            f"{args.teacher_epochs} epochs at 40 labelled images per class, scaled to as many images seen at the other budgets. "
            "Distillation alpha 0.5, tau 1.\n\n"
            f"{report}\n"
        )
        atomic_write_text(Path(args.markdown), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
