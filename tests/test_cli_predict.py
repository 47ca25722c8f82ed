"""`deit predict`: top-k per image, bad files reported by name, the rest still classified."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.cbook
import pytest
import torch
from PIL import Image

import deit
from deit.cli import main


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    config = deit.DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8,
        id2label={0: "cat", 1: "dog", 2: "eel", 3: "fox"},
    )
    torch.manual_seed(0)
    model = deit.DeiTForImageClassificationWithTeacher(config)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    deit.DeiTImageProcessor(size=36, crop_size=32).save_pretrained(folder)
    return folder


@pytest.fixture
def images(tmp_path) -> list[Path]:
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    good1, good2 = tmp_path / "hopper.jpg", tmp_path / "hopper_small.png"
    photo.save(good1)
    photo.resize((100, 80)).convert("L").save(good2)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good1.read_bytes()[:300])
    return [good1, not_image, good2, truncated]


@pytest.mark.parametrize("loading", [[], ["--workers", "2", "--threads", "1"], ["--resize", "torch", "--threads", "2"]])
def test_predict_json_matches_model_and_reports_bad_files(checkpoint, images, capsys, loading):
    code = main(["predict", *map(str, images), "--model", str(checkpoint), "--top-k", "3", "--json", *loading])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{images[1]}: not an image file" in captured.err
    assert str(images[3]) in captured.err
    results = {r["image"]: r for r in json.loads(captured.out)}
    assert "error" in results[str(images[1])] and "error" in results[str(images[3])]

    model = deit.DeiTForImageClassificationWithTeacher.from_pretrained(checkpoint)
    processor = deit.DeiTImageProcessor.from_pretrained(checkpoint)
    for path in (images[0], images[2]):
        with torch.no_grad():
            probs = model(processor(Image.open(path), return_tensors="pt")["pixel_values"]).logits.softmax(-1)[0]
        top = probs.topk(3)
        preds = results[str(path)]["predictions"]
        assert [p["id"] for p in preds] == top.indices.tolist()
        assert [p["label"] for p in preds] == [model.config.id2label[i] for i in top.indices.tolist()]
        # torch resize: torchvision's bicubic instead of Pillow's, a few 8-bit levels on some pixels.
        assert [p["score"] for p in preds] == pytest.approx(top.values.tolist(), abs=1e-5 if "torch" not in loading else 1e-3)


def test_predict_text_output_and_success_exit_code(checkpoint, images, capsys):
    assert main(["predict", str(images[0]), "--model", str(checkpoint), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 3
    assert lines[1].split()[1] in {"cat", "dog", "eel", "fox"}


def test_bad_loading_settings_are_refused(checkpoint, images, capsys):
    assert main(["predict", str(images[0]), "--model", str(checkpoint), "--threads", "0"]) != 0
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_console_script_exit_code_for_missing_model(tmp_path, images):
    proc = subprocess.run(
        [sys.executable, "-m", "deit", "predict", str(images[0]), "--model", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr
