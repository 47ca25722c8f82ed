"""A run stopped or killed in the middle of an epoch and resumed ends with the weights of an
uninterrupted run (same seed, CPU, deterministic algorithms)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from fit_helpers import FAST_KERNELS, datasets, max_abs_difference, needs_fast_kernels, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)
from safetensors.torch import load_file

from deit.train import checkpointing
from deit.train.engine import fit

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

# Everything random in the recipe is on: repeated augmentation, mixup/cutmix, stochastic depth,
# per-sample augmentation drawing from torch, NumPy and Python, EMA, a per-step schedule.
RANDOM_RECIPE = dict(
    repeated_aug=True, mixup=0.8, cutmix=1.0, drop_path=0.2, model_ema=True, model_ema_decay=0.9,
    lr_per_step=True, deterministic=True, epochs=2, clip_grad=1.0,
)


@pytest.mark.parametrize("fast_kernels", FAST_KERNELS)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_stop_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path, num_workers, fast_kernels):
    train_set, val_set = datasets()
    settings = dict(RANDOM_RECIPE, num_workers=num_workers, fast_kernels=fast_kernels)
    whole = fit(tiny_config(str(tmp_path / "whole"), **settings), train_dataset=train_set, val_dataset=val_set)
    steps_per_epoch = len(whole.step_losses) // 2

    stop_at = steps_per_epoch + 3  # in the middle of the second epoch
    first = fit(tiny_config(str(tmp_path / "cut"), stop_after_steps=stop_at, **settings), train_dataset=train_set, val_dataset=val_set)
    assert not first.completed
    state = checkpointing.load_checkpoint(tmp_path / "cut")
    assert (state["epoch"], state["global_step"]) == (1, stop_at) and state["batches_done"] == 3

    rest = fit(tiny_config(str(tmp_path / "cut"), resume="auto", **settings), train_dataset=train_set, val_dataset=val_set)
    assert rest.completed
    assert first.step_losses + rest.step_losses == whole.step_losses
    assert max_abs_difference(rest.model.state_dict(), whole.model.state_dict()) == 0.0
    assert max_abs_difference(rest.ema_model.state_dict(), whole.ema_model.state_dict()) == 0.0
    # The learning rate of the resumed epoch is the uninterrupted one, and the history is whole.
    assert [h["lr"] for h in rest.history] == [h["lr"] for h in whole.history]
    assert [h["val_acc1"] for h in rest.history] == [h["val_acc1"] for h in whole.history]


def test_resume_refuses_a_changed_schedule(tmp_path, capsys):
    train_set, val_set = datasets()
    fit(tiny_config(str(tmp_path / "run"), stop_after_steps=2), train_dataset=train_set, val_dataset=val_set)
    with pytest.raises(ValueError, match="schedule differs"):
        fit(tiny_config(str(tmp_path / "run"), resume="auto", epochs=5), train_dataset=train_set, val_dataset=val_set)
    assert "note: resuming with settings that differ from the checkpoint's: epochs" in capsys.readouterr().err


# Both objectives of the engine; pre-training has no labels to mix, and masks every image.
OBJECTIVES = {
    "classification": ("fit_helpers", "tiny_config", "deit.train.engine", "fit", dict(RANDOM_RECIPE, epochs=1)),
    "pretraining": ("pretrain_helpers", "tiny_pretrain_config", "deit.train.pretraining", "pretrain",
                    dict(RANDOM_RECIPE, epochs=1, mixup=0.0, cutmix=0.0)),
    # A few labelled images, the rest without labels and learned from a teacher (mixup mixes both).
    "partly labelled": ("fit_helpers", "tiny_partly_labelled_config", "fit_helpers", "fit_with_colour_teacher", dict(RANDOM_RECIPE, epochs=1)),
}

WORKER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{helpers!r}, {src!r}]
    import torch
    torch.set_num_threads(1)
    from fit_helpers import datasets
    from {config_module} import {make_config} as make_config
    from {run_module} import {run} as run

    output, resume = sys.argv[1], sys.argv[2] == "resume"
    train_set, val_set = datasets(train_size=192)
    config = make_config(output, checkpoint_every_steps=1, resume="auto" if resume else None, **{recipe!r})
    run(config, train_dataset=train_set, val_dataset=val_set)
    """
)


def start_worker(script: Path, output: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(output), mode], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# Classification with the student's Linear layers on oneDNN and not (their packed weights are
# what a checkpoint must restore); the other objectives once each: the kernels are the engine's,
# shared by every objective, so one setting each covers what differs (their data and loss).
KILL_CASES = [pytest.param(objective, fast_kernels, marks=[needs_fast_kernels] if fast_kernels == "on" else [])
              for objective, fast_kernels in [("classification", "on"), ("classification", "off"), ("pretraining", "on"),
                                              ("partly labelled", "off")]]


@pytest.mark.parametrize(("objective", "fast_kernels"), KILL_CASES)
def test_sigkill_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path, objective, fast_kernels):
    config_module, make_config, run_module, run, recipe = OBJECTIVES[objective]
    recipe = dict(recipe, fast_kernels=fast_kernels)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(helpers=str(HERE), src=str(SRC), config_module=config_module, make_config=make_config,
                                    run_module=run_module, run=run, recipe=recipe))

    killed = start_worker(script, tmp_path / "killed", "fresh")
    checkpoint = tmp_path / "killed" / checkpointing.CHECKPOINT_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and killed.poll() is None:
        if checkpoint.exists() and checkpointing.load_checkpoint(checkpoint)["global_step"] >= 4:
            break
        time.sleep(0.05)
    assert killed.poll() is None, f"the run ended before it could be killed: {killed.stderr.read()}"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = checkpointing.load_checkpoint(checkpoint)
    assert 0 < state["batches_done"] < 192 // 8, "killed in the middle of the epoch"

    resumed = start_worker(script, tmp_path / "killed", "resume")
    # The uninterrupted run, in this process (one thread, as the workers) while the resumed one runs.
    train_set, val_set = datasets(train_size=192)
    config = getattr(importlib.import_module(config_module), make_config)(str(tmp_path / "whole"), checkpoint_every_steps=1, **recipe)
    getattr(importlib.import_module(run_module), run)(config, train_dataset=train_set, val_dataset=val_set)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    final_whole = load_file(tmp_path / "whole" / "last" / "model.safetensors")
    final_resumed = load_file(tmp_path / "killed" / "last" / "model.safetensors")
    assert max_abs_difference(final_whole, final_resumed) == 0.0
    assert torch.equal(checkpointing.load_checkpoint(tmp_path / "killed")["model"]["deit.layernorm.weight"], final_resumed["deit.layernorm.weight"])
