"""Issue 24 items 9 and 11: the defaults of a run that adapt to it (loader processes, warm-up),
and the curves picture."""

from __future__ import annotations

import pytest

from deit.train import recipe
from deit.train.metrics import curves_figure
from deit.train.optim import WarmupCosineSchedule
from deit.train.recipe import TrainConfig


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_default_loader_processes_leave_a_core_to_training(monkeypatch, cores, expected):
    """Four workers on two cores made PyTorch warn three times; the default now fits the machine."""
    monkeypatch.setattr(recipe, "usable_cpus", lambda: cores)
    assert TrainConfig().resolved_num_workers == expected
    assert TrainConfig(num_workers=4).resolved_num_workers == 4  # asked for: as asked


@pytest.mark.parametrize("epochs, warmup", [(1, 0.0), (4, 0.0), (5, 1.0), (12, 2.0), (300, 5.0)])
def test_default_warmup_is_at_most_a_fifth_of_the_run(epochs, warmup):
    assert TrainConfig(epochs=epochs).resolved_warmup_epochs == warmup
    assert TrainConfig(epochs=epochs, warmup_epochs=5).resolved_warmup_epochs == 5


def test_a_one_epoch_run_trains_at_the_peak_rate():
    """``--epochs 1`` used to stay at the warm-up's 1e-6 for its whole length."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    config = TrainConfig(epochs=1)
    schedule = WarmupCosineSchedule(optimizer, peak_lr=1e-3, epochs=1, steps_per_epoch=3,
                                    warmup_epochs=config.resolved_warmup_epochs, per_step=config.lr_per_step)
    assert [schedule.lr_at(step) for step in range(3)] == [1e-3] * 3


def test_curves_have_one_colour_per_line_and_whole_epoch_ticks():
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.1, "val_acc1": 10.0 * e, "val_acc1_cls": 9.0 * e,
                "val_acc1_dist": 8.0 * e, "ema_acc1": 7.0 * e} for e in range(2)]
    figure = curves_figure({"": history})
    loss_axes, acc_axes = figure.axes
    colours = [line.get_color() for line in acc_axes.get_lines()]
    assert len(colours) == 4 and len(set(colours)) == 4
    figure.canvas.draw()
    ticks = [t for t in acc_axes.get_xticks() if acc_axes.get_xlim()[0] <= t <= acc_axes.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # Several runs: one colour per run, the line style telling a run's curves apart.
    runs = curves_figure({"a": history, "b": history}).axes[1].get_lines()
    assert {line.get_color() for line in runs[:4]} == {"C0"} and {line.get_color() for line in runs[4:]} == {"C1"}
