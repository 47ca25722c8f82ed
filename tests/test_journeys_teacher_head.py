"""Journey through the ``deit`` console script: a teacher trained on other classes, its head adapted
in the training engine (``--teacher-finetune-epochs``) before the student distils from it."""

from __future__ import annotations

import json

import pytest
from journey_fixtures import console_script, run_deit, save_hf_checkpoint, tiny_deit, write_image_folder

pytestmark = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")

QUICK = ("--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu", "--fast-kernels", "off")


def test_a_teacher_of_other_classes_gets_a_new_head_then_teaches(tmp_path):
    write_image_folder(tmp_path / "photos")  # cat, dog, fox
    student = save_hf_checkpoint(tmp_path / "student")
    teacher = save_hf_checkpoint(tmp_path / "teacher", tiny_deit(seed=3, labels=("owl", "bee", "ant", "elk", "yak")))
    proc = run_deit("train", "--model", student, "--data", tmp_path / "photos", "--output", tmp_path / "run", *QUICK,
                    "--teacher", teacher, "--teacher-finetune-epochs", "2", "--teacher-finetune-lr", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert "teacher head: cls_classifier, distillation_classifier replaced for 3 classes and trained alone" in proc.stdout
    assert "teacher head epoch 1/2: loss" in proc.stdout and "teacher head epoch 2/2: loss" in proc.stdout
    assert "(12 labelled images" in proc.stdout  # every training photo, once per head epoch
    # Then the student's run: hard distillation from the adapted teacher, its files written as usual.
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and "val_acc1_dist" in metrics[0]
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()
