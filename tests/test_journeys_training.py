"""Journeys of issue 24 through the ``deit`` console script: training, fine-tuning, resuming and
evaluating on a folder of real photographs, as a new user met each problem.

Each test names the item of issue 24 it covers. The runs are tiny (the 32 px two-block DeiT of
tests/journey_fixtures.py, one epoch of a dozen images, no loader processes): a few seconds each.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from journey_fixtures import CLASSES, console_script, run_deit, save_hf_checkpoint, tiny_deit, write_image_folder
from safetensors.torch import load_file

from deit.train import checkpointing
from deit.train.optim import scaled_lr

TRAIN_IMAGES, VAL_IMAGES = 4 * len(CLASSES), 2 * len(CLASSES)
# One epoch, no loader processes, no progress bar, the CPU: a run of a few seconds.
QUICK = ("--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu", "--fast-kernels", "off")

needs_script = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")
pytestmark = needs_script


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The module's folder, with the tiny checkpoint (tiny-deit/) and the photo folder (photos/) the journeys share."""
    root = tmp_path_factory.mktemp("training-journeys")
    save_hf_checkpoint(root / "tiny-deit")
    write_image_folder(root / "photos")
    return root


@pytest.fixture(scope="module")
def checkpoint(workspace) -> Path:
    return workspace / "tiny-deit"


@pytest.fixture(scope="module")
def photos(workspace) -> Path:
    return workspace / "photos"


def history(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def train(checkpoint: Path, photos: Path, output: Path, *extra: str):
    return run_deit("train", "--model", checkpoint, "--data", photos, "--output", output, *QUICK, *extra)


def assert_the_console_shows_the_plan_and_short_run_defaults(proc, output: Path) -> None:
    """Item 9 (silent defaults), on a run of QUICK's settings: the console shows the plan, and the
    recipe's defaults that a 3-step run would waste adapt or are switched off, each said so."""
    out, err = proc.stdout, proc.stderr
    assert f"data: {TRAIN_IMAGES} training images, {VAL_IMAGES} validation images, 3 classes (cat, dog, fox)" in out
    assert f"steps: {TRAIN_IMAGES // 4} per epoch of 4 images (4 per step x 1 process(es) x 1 accumulation), 1 epoch(s) = 3 steps" in out
    assert "time: " in err and "for this run's 3 steps (plus validation)" in err
    entry = history(output)[0]
    assert f"epoch 1/1: train loss {entry['train_loss']:.4f}, val top-1 {entry['val_acc1']:.2f} %" in out
    # The warm-up no longer swallows a short run: the one epoch trains at the peak rate, not 1e-6.
    assert "note: warm-up 0 epoch(s): the recipe's 5 are cut to at most a fifth of a 1-epoch run" in err
    assert entry["lr"] == pytest.approx(scaled_lr(5e-4, 4))
    # The EMA would stay at the initial weights: off, with a note, and no ema/ model saved.
    assert "note: EMA off: an EMA with decay 0.99996 would still be 100 % the initial weights after this run's 3 steps" in err
    assert not (output / "ema").exists() and "ema_acc1" not in entry
    assert "note: repeated augmentation x3 (the recipe's): each epoch trains on 3 views of about 4 of the 12 images" in err
    assert "finished 1 epoch: top-1" in out


# ------------------------------------------------------------------ item 1: Hub names (a bare preset: tests/test_journeys.py::test_train_one_epoch)
def test_item1_hub_name_offline_is_one_clear_error_not_fresh_weights(workspace, photos):
    """``--model facebook/deit-...`` loads the Hub's weights; offline and not cached, it stops at
    once with one error (it used to train from random weights without a word)."""
    output = workspace / "hub-name"
    proc = run_deit("train", "--model", "facebook/deit-tiny-distilled-patch16-224", "--data", photos, "--output", output, *QUICK)
    assert proc.returncode != 0
    assert "facebook/deit-tiny-distilled-patch16-224' is not a local path and is not in the Hugging Face cache" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (output / "metrics.jsonl").exists() and not (output / "last").exists()


# ------------------------------------------------------------------ items 2, 9 and 11: overwrite protection, the plan on the console, a run folder as a model
def test_item2_a_finished_run_is_not_overwritten_without_overwrite(workspace, checkpoint, photos):
    output = workspace / "finished"
    first = train(checkpoint, photos, output)
    assert first.returncode == 0, first.stderr
    assert_the_console_shows_the_plan_and_short_run_defaults(first, output)
    before = {name: (output / name).read_bytes() for name in ("metrics.jsonl", "best/model.safetensors", "checkpoint.pt")}

    again = train(checkpoint, photos, output, "--seed", "1")
    assert again.returncode != 0
    assert f"{output} already holds a training run (checkpoint.pt, metrics.jsonl, curves.png, best, last); continue it with --resume, " \
           "start afresh with --overwrite" in again.stderr
    assert {name: (output / name).read_bytes() for name in before} == before, "the finished run was touched"

    (output / "notes.txt").write_text("mine")
    fresh = train(checkpoint, photos, output, "--seed", "1", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert f"--overwrite: removed the previous run's checkpoint.pt, metrics.jsonl, curves.png, best, last from {output}" in fresh.stderr
    assert (output / "checkpoint.pt").read_bytes() != before["checkpoint.pt"] and len(history(output)) == 1
    assert (output / "notes.txt").read_text() == "mine"  # only the run's own files are replaced

    # Item 11: the run's folder given as a model points at the models in it.
    proc = run_deit("predict", "--model", output, photos / "val" / "cat")
    assert proc.returncode != 0
    assert f"this is a training run's folder: its models are {output / 'best'} and {output / 'last'}" in proc.stderr


# ------------------------------------------------------------------ item 3: teacher class order
def test_item3_teacher_with_the_classes_in_another_order_is_reordered_and_other_names_refused(workspace, checkpoint, photos):
    reordered = save_hf_checkpoint(workspace / "teacher-reordered", tiny_deit(seed=5, labels=("dog", "fox", "cat")))
    proc = train(checkpoint, photos, workspace / "with-reordered-teacher", "--teacher", reordered)
    assert proc.returncode == 0, proc.stderr
    assert f"teacher {reordered}: same classes in another order (dog, fox, cat); its logits are reordered to the data's" in proc.stdout

    strangers = save_hf_checkpoint(workspace / "teacher-other", tiny_deit(seed=5, labels=("owl", "cat", "dog")))
    refused = train(checkpoint, photos, workspace / "with-other-teacher", "--teacher", strangers)
    assert refused.returncode != 0
    assert f"the teacher {strangers} predicts the classes owl, cat, dog but the data has cat, dog, fox" in refused.stderr


# ------------------------------------------------------------------ items 4 and 5: eval
@pytest.fixture(scope="module")
def photos_with_corrupt(workspace, photos) -> Path:
    root = workspace / "photos-corrupt"
    shutil.copytree(photos, root)
    (root / "val" / "cat" / "cat_1b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    return root


def eval_json(checkpoint: Path, data: Path, *extra: str) -> dict:
    proc = run_deit("eval", checkpoint, "--data", data, "--num-workers", "0", "--batch-size", "4", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) | {"stderr": proc.stderr}


def test_item4_a_corrupt_validation_image_is_left_out_not_counted_as_another(checkpoint, photos, photos_with_corrupt):
    clean = eval_json(checkpoint, photos)
    with_corrupt = eval_json(checkpoint, photos_with_corrupt)
    assert with_corrupt["corrupt_images"] == 1 and with_corrupt["num_samples"] == VAL_IMAGES == clean["num_samples"]
    assert {k: v for k, v in with_corrupt.items() if k.startswith("acc")} == {k: v for k, v in clean.items() if k.startswith("acc")}
    assert "deit eval: left out 1 corrupt image(s): " in with_corrupt["stderr"] and "CorruptImageWarning" not in with_corrupt["stderr"]


def test_item4_training_validation_leaves_a_corrupt_image_out(workspace, checkpoint, photos_with_corrupt):
    output = workspace / "train-corrupt"
    proc = train(checkpoint, photos_with_corrupt, output)
    assert proc.returncode == 0, proc.stderr
    entry = history(output)[0]
    assert entry["val_num_samples"] == VAL_IMAGES and entry["val_corrupt_images"] == 1
    # Named once, on a line of its own (not inside the progress bar), with no warning's source line.
    assert f"note: skipped 1 unreadable validation image(s) (left out): {photos_with_corrupt / 'val' / 'cat' / 'cat_1b.jpg'}\n" in proc.stderr
    assert "CorruptImageWarning" not in proc.stderr


def test_item5_eval_of_a_plain_class_folder_tree_scores_every_image(workspace, checkpoint, photos):
    """``--data photos/val`` (class folders, no split) is a test set: all its images, not a 10 % hold-out;
    a tree with a val/ folder only is its validation split, not one class called "val"."""
    plain = eval_json(checkpoint, photos / "val")
    assert plain["num_samples"] == VAL_IMAGES and plain["split"] == "all"
    assert f"{photos / 'val'} is a folder of class folders without train/ and val/: evaluating all its {VAL_IMAGES} images" in plain["stderr"]
    val_only = workspace / "val-only"
    shutil.copytree(photos / "val", val_only / "val")
    scored = eval_json(checkpoint, val_only)
    assert scored["num_samples"] == VAL_IMAGES and scored["split"] == "val"
    assert {k: v for k, v in scored.items() if k.startswith("acc")} == {k: v for k, v in plain.items() if k.startswith("acc")}
    assert eval_json(checkpoint, photos / "val", "--split", "val")["num_samples"] == len(CLASSES)  # one held out per class


# ------------------------------------------------------------------ item 7: mistyped local paths
def test_item7_a_mistyped_local_path_is_named_at_once(workspace, photos):
    (workspace / "runs").mkdir(exist_ok=True)
    start = time.monotonic()
    proc = run_deit("predict", "--model", "runs/nothere", photos / "val" / "cat", cwd=workspace)
    assert proc.returncode != 0
    assert "runs/nothere: no such file or folder (runs/ is a local folder, so this is a path, not a Hub name)" in proc.stderr
    assert time.monotonic() - start < 60
    typo = run_deit("train", "--model", "tiny-deit.safetensors", "--data", photos, *QUICK, cwd=workspace)
    assert "tiny-deit.safetensors: no such file or folder (a file name, not a Hub name)" in typo.stderr


# ------------------------------------------------------------------ item 8: bare --resume
def test_item8_bare_resume_restores_the_runs_settings(workspace, checkpoint, photos):
    """Stopped early, ``deit train --output RUN --resume`` (nothing else) continues with the run's
    own settings and ends with the weights of an uninterrupted run; an option given overrides, said so."""
    settings = ("--batch-size", "2", "--no-repeated-aug", "--deterministic", "--lr", "1e-3", "--seed", "3")
    whole, stopped = workspace / "resume-whole", workspace / "resume-stopped"
    assert train(checkpoint, photos, whole, *settings).returncode == 0
    first = train(checkpoint, photos, stopped, *settings, "--stop-after-steps", "2")
    assert first.returncode == 0, first.stderr
    assert f"continue with: deit train ... --output {stopped} --resume" in first.stderr

    # An option given overrides the run's (one that leaves the steps as they were), said so.
    resumed = run_deit("train", "--output", stopped, "--resume", "--checkpoint-every-steps", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert (f"resuming {stopped / checkpointing.CHECKPOINT_NAME} with the run's settings (model {checkpoint}, data {photos}, 1 epochs); "
            "from the command line: checkpoint_every_steps 1 (the run's: 0)") in resumed.stderr
    assert "finished 1 epoch:" in resumed.stdout
    expected, got = (load_file(out / "last" / "model.safetensors") for out in (whole, stopped))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    missing = run_deit("train", "--output", workspace / "no-run-here", "--resume")
    assert missing.returncode != 0
    assert f"{workspace / 'no-run-here' / checkpointing.CHECKPOINT_NAME}: no training checkpoint to resume" in missing.stderr
    assert "size mismatch" not in missing.stderr


# ------------------------------------------------------------------ item 9: silent defaults
def test_item9_a_teacher_without_weights_is_refused(workspace, checkpoint, photos):
    proc = train(checkpoint, photos, workspace / "random-teacher", "--teacher", "torchvision:resnet18")
    assert proc.returncode != 0
    assert "teacher torchvision:resnet18 would have random weights (no --teacher-weights FILE)" in proc.stderr


# ------------------------------------------------------------------ item 11: smaller things
def test_item11_new_heads_are_reported_once_without_a_stack_line(workspace, photos):
    other = save_hf_checkpoint(workspace / "ten-labels", tiny_deit(labels=tuple(f"c{i}" for i in range(10))))
    output = workspace / "new-heads"
    proc = train(other, photos, output, "--stop-after-steps", "1")
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert both.count("newly initialised") == 1 and "newly initialised 4 (cls_classifier, distillation_classifier)" in proc.stdout
    assert "UserWarning" not in both and "warnings.warn" not in both
    resumed = run_deit("train", "--output", output, "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "newly initialised" not in resumed.stdout + resumed.stderr and "UserWarning" not in resumed.stderr


def test_item11_help_texts_have_one_default_each_and_eval_options_are_described():
    """The parsers' own help texts (the console script's ``--help`` is tests/test_cli_help.py's)."""
    from deit.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    train_help = " ".join(commands["train"].format_help().split())
    assert "(default: None)" not in train_help and not re.search(r"\(default[^)]*\) \(default", train_help)
    assert "--val-data VAL_DATA validation data (default: the val split of --data) --num-workers" in train_help
    assert "--overwrite, --no-overwrite start afresh" in train_help
    eval_help = " ".join(commands["eval"].format_help().split())
    for option, text in (("--split {train,val,all}", "which images of --data"), ("--batch-size BATCH_SIZE", "images per forward pass"),
                         ("--num-workers NUM_WORKERS", "DataLoader processes that decode images")):
        assert f"{option} {text}" in eval_help


# ------------------------------------------------------------------ item 12: the teacher's input
def test_item12_a_timm_teacher_with_the_users_weights_gets_the_students_batch(workspace, checkpoint, photos):
    """On 32 px data a timm convnet with the user's own weights file is fed the 32 px batch (as
    timm's train.py feeds its teacher), not resized to its pretrained_cfg's 160 px; the console says so."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    weights = workspace / "resnet-teacher.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES)).state_dict(), str(weights))
    proc = train(checkpoint, photos, workspace / "timm-teacher", "--teacher", "timm:test_resnet", "--teacher-weights", weights)
    assert proc.returncode == 0, proc.stderr
    assert ("teacher timm:test_resnet: input 32x32 px (the student's batch as it is: the weights file's training size is unknown "
            "(timm's train.py feeds its teacher the same)); normalisation mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225) "
            "(the student's: the weights file's are unknown)") in proc.stdout


@pytest.mark.parametrize("command", ["train", "pretrain", "eval"])
def test_item11_every_training_option_has_a_text(command):
    from deit.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [action.option_strings or action.dest for action in commands[command]._actions if not (action.help or "").strip()]
    assert not silent, f"deit {command}: options without a help text: {silent}"
