"""Issue 26 through the ``deit`` console script: build a teacher cache with the training command
line, train from it without the teacher, and be refused when the run's views are not the cache's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from journey_fixtures import console_script, run_deit, save_hf_checkpoint, tiny_deit, write_image_folder

pytestmark = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")


def test_a_teacher_cache_built_from_the_training_command_line_serves_the_student(tmp_path):
    student, teacher = save_hf_checkpoint(tmp_path / "student"), save_hf_checkpoint(tmp_path / "teacher", tiny_deit(seed=5))
    photos = write_image_folder(tmp_path / "photos")
    options = ("--model", student, "--data", photos, "--teacher", teacher, "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
               "--device", "cpu", "--fast-kernels", "off", "--no-progress")

    built = run_deit("teacher-cache", *options, "--output", tmp_path / "cache")
    assert built.returncode == 0, built.stderr
    # 12 training images shown 3 times (repeated augmentation) per epoch = 12 views, x top 3 of 3 classes.
    assert f"teacher cache: 1 epoch(s) x 12 views x top 3 of 3 classes = 288 bytes (22 bytes per view) in {tmp_path / 'cache'}" in built.stdout
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["fingerprint"]["seed"] == 0 and manifest["teacher"]["spec"] == str(teacher)

    trained = run_deit("train", *options, "--output", tmp_path / "run", "--teacher-cache", tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr
    assert f"teacher {teacher}: read from the teacher cache {tmp_path / 'cache'} (every class (exact logits), 1 epoch(s) of views)" in trained.stdout
    assert (Path(tmp_path / "run" / "last" / "model.safetensors")).is_file()

    refused = run_deit("train", *options, "--output", tmp_path / "other-seed", "--teacher-cache", tmp_path / "cache", "--seed", "1")
    assert refused.returncode != 0
    assert "was made for other views than this run's: --seed: 0 in the cache, 1 in this run" in refused.stderr
