"""Issue 29 through the ``deit`` console script: the switches a user of timm's train.py or the
transformers Trainer reaches for, all in one run on a folder of photographs, and the Hub boundary.

The run is tiny (the 32 px two-block DeiT of tests/journey_fixtures.py, one epoch of a dozen
images). ``--compile aot_eager`` (TorchDynamo and AOTAutograd, no generated kernels) keeps it
short; Inductor compiles the same graphs into C++ for a minute per graph on a busy 2-core
machine (BENCHMARKS.md: benchmarks/compile_training.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_teachers import save_transformers_resnet
from journey_fixtures import CLASSES, console_script, run_deit, save_hf_checkpoint, write_image_folder

pytestmark = pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python; pip install -e . installs it")

QUICK = ("--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu", "--fast-kernels", "off")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer-tools")
    save_hf_checkpoint(root / "tiny-deit")
    write_image_folder(root / "photos")
    save_transformers_resnet(root / "resnet", CLASSES)
    return root


def test_compile_layer_decay_checkpointing_tensorboard_and_an_hf_teacher_in_one_run(workspace):
    pytest.importorskip("tensorboard")
    from huggingface_hub import ModelCard

    output = workspace / "run"
    proc = run_deit(
        "train", "--model", workspace / "tiny-deit", "--data", workspace / "photos", "--output", output, *QUICK,
        "--compile", "aot_eager", "--layer-decay", "0.75", "--grad-checkpointing", "--log", "tensorboard",
        "--teacher", f"hf:{workspace / 'resnet'}", "--distillation-type", "soft",
    )
    assert proc.returncode == 0, proc.stderr
    assert "preprocessor_config.json" in proc.stdout  # the teacher's input follows its own processor
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))
    card = ModelCard.load(output / "last" / "README.md")
    metrics = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["top-1 (CLS head)"] == pytest.approx(metrics["val_acc1_cls"], abs=1e-4)
    assert card.data.library_name == "deit" and "knowledge-distillation" in card.data.tags
    assert "| layer_decay | 0.75 |" in card.text and "| distillation type | soft |" in card.text


def test_push_to_hub_offline_stops_before_training_with_one_line(workspace):
    output = workspace / "offline"
    proc = run_deit("train", "--model", workspace / "tiny-deit", "--data", workspace / "photos", "--output", output, *QUICK,
                    "--push-to-hub", "someone/tiny-deit")  # run_deit sets HF_HUB_OFFLINE=1
    assert proc.returncode != 0
    assert "cannot push to the Hub repository someone/tiny-deit: HF_HUB_OFFLINE is set" in proc.stderr
    assert "Traceback" not in proc.stderr and not (output / "checkpoint.pt").exists()


def test_compile_with_an_unknown_backend_is_named(workspace):
    proc = run_deit("train", "--model", workspace / "tiny-deit", "--data", workspace / "photos", "--output", workspace / "nonsense",
                    *QUICK, "--compile", "nonsense")
    assert proc.returncode != 0 and "--compile nonsense: no such torch.compile backend" in proc.stderr
