"""Masked-image-modeling pre-training through the training engine: the loss, the files, the
hand-over to fine-tuning, the command line."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from journey_fixtures import run_deit
from fit_helpers import IMAGE_SIZE, datasets, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)
from PIL import Image
from pretrain_helpers import MASK_PATCH, tiny_pretrain_config
from safetensors.torch import load_file

from deit import DeiTConfig, DeiTForMaskedImageModeling
from deit.cli import main
from deit.train import PretrainConfig, pretrain
from deit.train.data import build_dataset
from deit.train.engine import fit
from deit.train.masking import MaskGenerator
from deit.train.reconstruction import reconstruction_panels
from deit.train.student import build_student


def simmim_loss_by_hand(pixels: np.ndarray, reconstruction: np.ndarray, masks: np.ndarray, patch: int) -> float:
    """SimMIM's loss written out: |x - x_hat| over the pixels of masked patches, all channels,
    divided by (masked pixels x channels) of the whole batch."""
    batch, channels, height, width = pixels.shape
    grid = width // patch
    total, masked_pixels = 0.0, 0
    for b in range(batch):
        for p in np.flatnonzero(masks[b]):
            row, col = divmod(int(p), grid)
            window = np.s_[b, :, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch]
            total += float(np.abs(pixels[window].astype(np.float64) - reconstruction[window]).sum())
            masked_pixels += patch * patch
    return total / (masked_pixels * channels)


def test_the_loss_is_simmims_l1_on_masked_pixels_and_matches_transformers(tmp_path):
    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4, encoder_stride=4)
    torch.manual_seed(0)
    ours = DeiTForMaskedImageModeling(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero mask token and decoder bias
    ours.save_pretrained(tmp_path)
    theirs = transformers.DeiTForMaskedImageModeling.from_pretrained(tmp_path).eval()
    masks_of = MaskGenerator(16, MASK_PATCH, 4, 0.6)
    masks = torch.stack([masks_of.for_training_sample(seed) for seed in range(5)])
    pixels = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(pixels, bool_masked_pos=masks)
        b = theirs(pixels, bool_masked_pos=masks)
    by_hand = simmim_loss_by_hand(pixels.numpy(), a.reconstruction.numpy(), masks.numpy(), 4)
    assert float(a.loss) == pytest.approx(by_hand, rel=1e-5)
    assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-5, abs=1e-6)
    assert torch.allclose(a.reconstruction, b.reconstruction, atol=1e-5)


def test_pretrain_writes_metrics_curves_reconstructions_and_a_checkpoint_transformers_reads(tmp_path):
    train_set, val_set = datasets()
    result = pretrain(tiny_pretrain_config(str(tmp_path / "run")), train_dataset=train_set, val_dataset=val_set)
    assert result.completed and len(result.history) == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["val_loss"] for entry in lines] == [entry["val_loss"] for entry in result.history]
    assert all(entry["train_loss"] > 0 for entry in lines)
    assert result.best == min(entry["val_loss"] for entry in lines)
    for name in ("curves.png", "reconstructions.png", "checkpoint.pt", "last/model.safetensors", "best/model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    with Image.open(tmp_path / "run" / "reconstructions.png") as sheet:
        assert sheet.width > 4 * 96 and sheet.height > 3 * 96  # 3 rows, 4 columns of enlarged 16 px images

    # The reported validation loss is transformers' loss of the saved weights on the same images and masks.
    theirs = transformers.DeiTForMaskedImageModeling.from_pretrained(tmp_path / "run" / "last").eval()
    masks_of = MaskGenerator(IMAGE_SIZE, MASK_PATCH, 4, 0.6)
    images = torch.stack([val_set[i][0] for i in range(len(val_set))])
    masks = torch.stack([masks_of.for_validation_image(0, i) for i in range(len(val_set))])
    with torch.no_grad():
        reference = float(theirs(images, bool_masked_pos=masks).loss)
    assert result.history[-1]["val_loss"] == pytest.approx(reference, rel=1e-5)


def test_reconstruction_panels_paste_only_into_masked_patches():
    config = DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4, encoder_stride=4)
    torch.manual_seed(0)
    model = DeiTForMaskedImageModeling(config)
    images = torch.rand(2, 3, 16, 16)
    masks = torch.stack([MaskGenerator(16, 8, 4, 0.6).for_training_sample(s) for s in range(2)])
    panels = reconstruction_panels(model, images, masks, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixel_masks = masks.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).expand(2, 3, 16, 16)
    source, masked, rebuilt, pasted = panels.unbind(1)
    assert torch.equal(source, images)
    assert torch.equal(masked[~pixel_masks], images[~pixel_masks]) and bool((masked[pixel_masks] == 0.5).all())
    assert torch.equal(pasted[~pixel_masks], images[~pixel_masks]) and torch.equal(pasted[pixel_masks], rebuilt[pixel_masks])


def test_fine_tuning_a_pretrained_checkpoint_loads_the_encoder_and_says_what_is_new(tmp_path, capsys):
    train_set, val_set = datasets()
    pretrain(tiny_pretrain_config(str(tmp_path / "pre"), epochs=1), train_dataset=train_set, val_dataset=val_set)
    pretrained = load_file(tmp_path / "pre" / "last" / "model.safetensors")
    capsys.readouterr()
    finetune = tiny_config(str(tmp_path / "fine"), model=str(tmp_path / "pre" / "last"), image_size=None, patch_size=None, hidden_size=None, depth=None, heads=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once, by the log line (issue 24 item 11)
        student = build_student(finetune, dict(enumerate(train_set.classes)), log=print)
    log = capsys.readouterr().out
    assert "loaded 39 tensors" in log and "deit.encoder.layer.*.attention.attention.query, " in log
    assert "newly initialised 4 (cls_classifier, distillation_classifier)" in log
    state = student.state_dict()
    body = [k for k in state if k.startswith("deit.")]
    assert len(body) == 39 and all(torch.equal(state[k], pretrained[k]) for k in body)
    assert "deit.embeddings.mask_token" not in state and not any(k.startswith("decoder") for k in state)
    # And the engine trains it, with the same log line, without and with a teacher (hard distillation).
    result = fit(finetune, train_dataset=train_set, val_dataset=val_set)
    assert result.completed and "newly initialised 4" in capsys.readouterr().out
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, len(train_set.classes)))
    distilled = fit(finetune, teacher=teacher, output=str(tmp_path / "distilled"), train_dataset=train_set, val_dataset=val_set)
    assert distilled.completed and "val_acc1_dist" in distilled.final_metrics


def test_pretrain_under_bf16_autocast_with_ema_stops_and_keeps_a_checkpoint(tmp_path):
    train_set, val_set = datasets()
    config = tiny_pretrain_config(str(tmp_path / "run"), amp="bf16", model_ema=True, model_ema_decay=0.9, stop_after_steps=3)
    result = pretrain(config, train_dataset=train_set, val_dataset=val_set)
    assert not result.completed and len(result.step_losses) == 3
    assert all(0 < loss < 10 for loss in result.step_losses)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_pretraining_from_a_classifier_keeps_its_encoder_and_starts_a_new_decoder(tmp_path, capsys):
    from deit import DeiTForImageClassificationWithTeacher
    from deit.train.distributed import DistributedContext
    from deit.train.pretraining import PretrainTrainer

    torch.manual_seed(0)
    # encoder_stride 16 (the Hugging Face default) on 4 px patches: the new decoder must use 4.
    source = DeiTForImageClassificationWithTeacher(DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                                              image_size=16, patch_size=4, num_labels=3))
    source.save_pretrained(tmp_path / "source")
    train_set, val_set = datasets()
    config = tiny_pretrain_config(str(tmp_path / "run"), model=str(tmp_path / "source"), image_size=None, patch_size=None, hidden_size=None,
                                  depth=None, heads=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the log line says what is new; no warning repeats it (issue 24 item 11)
        trainer = PretrainTrainer(config, DistributedContext(0, 1, 0, torch.device("cpu")), train_set=train_set, val_set=val_set)
    assert "newly initialised 3 (decoder.0, deit.embeddings.mask_token)" in capsys.readouterr().out
    model = trainer.model
    assert model.config.encoder_stride == 4 and model.decoder[0].out_channels == 4 * 4 * 3
    theirs = source.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items() if key in theirs)
    assert sum(key in theirs for key in model.state_dict()) == 39


def test_pretrain_refuses_labels_only_settings():
    with pytest.raises(ValueError, match="mixup/cutmix"):
        PretrainConfig(mixup=0.8).validate()
    with pytest.raises(ValueError, match="no teacher"):
        PretrainConfig(teacher="SmallConvNet").validate()


def test_an_hf_dataset_without_a_label_column_is_read_for_pretraining_only(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(30)]
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})).save_to_disk(str(tmp_path / "ds"))
    train = build_dataset(f"hf:{tmp_path / 'ds'}", "train", labelled=False)
    val = build_dataset(f"hf:{tmp_path / 'ds'}", "val", labelled=False)
    assert (len(train), len(val)) == (27, 3)  # 10 % held out, as for a labelled data set
    assert train[0][0].size == (12, 12)
    with pytest.raises(ValueError, match="no label column"):
        build_dataset(f"hf:{tmp_path / 'ds'}", "train")


def test_cli_pretrains_on_an_unlabelled_folder_and_names_bad_sizes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(24):  # a flat folder: no class folders, no labels
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"img{k}.png")
    common = ["pretrain", "--data", str(tmp_path), "--image-size", "16", "--patch-size", "4", "--hidden-size", "32", "--depth", "1",
              "--heads", "2", "--batch-size", "8", "--num-workers", "0", "--no-progress", "--epochs", "1"]
    assert main([*common, "--mask-patch-size", "6", "--output", str(tmp_path / "bad")]) == 2
    assert "mask patch size (6) must be a multiple of the model's patch size (4)" in capsys.readouterr().err
    assert main([*common, "--mask-patch-size", "8", "--output", str(tmp_path / "run")]) == 0
    assert "validation reconstruction loss" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["val_num_samples"] == 2  # 10 % of 24 held out


def test_demo_pretrain_quick_runs_the_whole_path(tmp_path):
    # Through the console script, as a user runs it.
    proc = run_deit("demo", "--pretrain", "--quick", "--out", tmp_path, "--num-workers", "0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "loaded 71 tensors" in out and "newly initialised 4 (cls_classifier, distillation_classifier)" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["pretrain_epochs"], results["finetune_epochs"]) == (1, 1)
    assert 0 <= results["pretrained_acc1"] <= 100 and 0 <= results["scratch_acc1"] <= 100
    pretrain_metrics = json.loads((tmp_path / "pretrain" / "metrics.jsonl").read_text())
    assert pretrain_metrics["val_num_samples"] == 200  # the quick slice: 20 validation digits per class
    for name in ("pretrain/reconstructions.png", "curves.png", "results.md", "finetune/last/model.safetensors", "scratch/last/model.safetensors"):
        assert (tmp_path / name).is_file(), name
