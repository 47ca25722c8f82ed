"""Run metrics: reduction across ranks, per-epoch JSON lines, and a PNG of the curves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..atomic import atomic_path, atomic_write_text

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum of ``values`` over all ranks (the values themselves on one process), in float64."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


class RunningMean:
    """Mean of a per-sample quantity over a number of samples, reducible across ranks."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, value: float, count: int = 1) -> None:
        self.total += value * count
        self.count += count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def reduced(self, device: torch.device | str = "cpu") -> float:
        total, count = all_reduce_sum([self.total, self.count], device)
        return total / count if count else math.nan


def write_metrics(path: str | os.PathLike, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite the JSON-lines file from the run's history (one object per epoch).

    Rewriting, not appending, keeps the file right after a resume: an epoch whose line was
    written before a crash but whose checkpoint was not is not listed twice.
    """
    atomic_write_text(path, "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in history))


def curves_figure(runs: Mapping[str, Sequence[dict[str, Any]]], title: str | None = None) -> Any:
    """The matplotlib Figure of :func:`plot_curves`: one colour per curve for a single run, one
    colour per run (the line style telling its curves apart) for several; whole epochs on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    has_accuracy = any("val_acc1" in entry for history in runs.values() for entry in history)
    figure = Figure(figsize=(10, 4) if has_accuracy else (5, 4), dpi=100)
    loss_axes, acc_axes = figure.subplots(1, 2) if has_accuracy else (figure.subplots(1, 1), None)
    single = len(runs) == 1
    for run_index, (run, history) in enumerate(runs.items()):
        prefix = f"{run}: " if run else ""
        epochs = [entry["epoch"] + 1 for entry in history]

        def curve(axes: Any, key: str, label: str, style: str, series: int) -> None:
            if any(key in entry for entry in history):
                values = [entry.get(key, math.nan) for entry in history]
                colour = f"C{series if single else run_index}"
                axes.plot(epochs, values, style, color=colour, marker=".", label=f"{prefix}{label}")

        curve(loss_axes, "train_loss", "training", "-", 0)
        curve(loss_axes, "val_loss", "validation", "--", 1)
        if acc_axes is None:
            continue
        curve(acc_axes, "val_acc1", "averaged heads" if any("val_acc1_cls" in e for e in history) else "top-1", "-", 0)
        curve(acc_axes, "val_acc1_cls", "CLS head", "--", 1)
        curve(acc_axes, "val_acc1_dist", "DIST head", ":", 2)
        curve(acc_axes, "ema_acc1", "EMA", "-.", 3)
    for axes in (loss_axes, acc_axes):
        if axes is not None:
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
            axes.legend(fontsize="small")
    loss_axes.set_ylabel("loss")
    if acc_axes is not None:
        acc_axes.set_ylabel("validation top-1 (%)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_curves(runs: Mapping[str, Sequence[dict[str, Any]]], path: str | os.PathLike, title: str | None = None) -> None:
    """Training loss and validation top-1 per epoch, side by side, as a PNG; one or more runs.

    ``runs`` maps a run's name (empty for a single run) to its history. Histories without
    accuracies (masked-image pre-training) get the loss panel only.
    """
    figure = curves_figure(runs, title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
