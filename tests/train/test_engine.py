"""The training engine: optimizer groups, schedule, EMA, checkpoints, fine-tuning set-up, and fit() itself."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from fit_helpers import FAST_KERNELS, IMAGE_SIZE, datasets, max_abs_difference, one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)

from deit import DeiTConfig, DeiTForImageClassificationWithTeacher
from deit.train import checkpointing
from deit.train.distributed import DistributedContext
from deit.train.ema import ModelEma
from deit.train.engine import NonFiniteLossError, fit
from deit.train.epoch_order import EpochOrder, sample_seed
from deit.train.optim import WarmupCosineSchedule, build_optimizer, is_decayed, scaled_lr
from deit.train.recipe import TrainConfig
from deit.train.student import build_student


def tiny_model(**overrides) -> DeiTForImageClassificationWithTeacher:
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4, num_labels=3)
    settings.update(overrides)
    return DeiTForImageClassificationWithTeacher(DeiTConfig(**settings))


# ----------------------------------------------------------------------------- optimizer
def test_no_weight_decay_on_biases_norms_tokens_positions():
    model = tiny_model()
    no_decay = {name for name, p in model.named_parameters() if not is_decayed(name, p)}
    for name in ("deit.embeddings.cls_token", "deit.embeddings.distillation_token", "deit.embeddings.position_embeddings",
                 "deit.encoder.layer.0.layernorm_before.weight", "deit.layernorm.bias", "cls_classifier.bias",
                 "deit.encoder.layer.1.attention.attention.query.bias"):
        assert name in no_decay, name
    for name in ("deit.embeddings.patch_embeddings.projection.weight", "deit.encoder.layer.0.attention.attention.query.weight",
                 "deit.encoder.layer.1.output.dense.weight", "cls_classifier.weight", "distillation_classifier.weight"):
        assert name not in no_decay, name
    groups = build_optimizer(model, lr=1e-3, weight_decay=0.05).param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_linear_scaling_rule():
    assert scaled_lr(5e-4, 512) == pytest.approx(5e-4)
    assert scaled_lr(5e-4, 1024) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 64) == pytest.approx(6.25e-5)


def schedule(per_step: bool) -> WarmupCosineSchedule:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return WarmupCosineSchedule(optimizer, peak_lr=1.0, epochs=10, steps_per_epoch=4, warmup_epochs=2, warmup_lr=0.0, min_lr=0.1, per_step=per_step)


def test_schedule_per_step_by_hand():
    s = schedule(per_step=True)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(4) == pytest.approx(0.5)  # one epoch into a two-epoch warm-up
    assert s.lr_at(8) == pytest.approx(1.0)  # warm-up done: the peak
    assert s.lr_at(24) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 4 / 8)))  # half-way through the cosine
    assert s.lr_at(39) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 7.75 / 8)))
    assert s.apply(5) == s.optimizer.param_groups[0]["lr"] == pytest.approx(0.625)


def test_schedule_per_epoch_changes_at_epoch_boundaries_and_ends_at_min_lr():
    s = schedule(per_step=False)
    assert [s.lr_at(k) for k in range(4)] == [0.0] * 4
    assert s.lr_at(4) == pytest.approx(0.5)
    assert s.lr_at(8) == pytest.approx(1.0)
    assert s.lr_at(39) == pytest.approx(0.1)  # last epoch trains at min_lr


def test_schedule_refuses_a_changed_shape_on_resume():
    state = schedule(per_step=True).state_dict()
    other = schedule(per_step=False)
    with pytest.raises(ValueError, match="per_step"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------------- EMA
def test_ema_update_by_hand():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(4.0)
    ema.update(model)
    assert torch.equal(ema.module.weight, torch.full((1, 2), 0.75 * 1 + 0.25 * 3))
    assert torch.equal(ema.module.bias, torch.tensor([1.0]))
    assert not any(p.requires_grad for p in ema.module.parameters())


# --------------------------------------------------------------------------- checkpoints
def test_rng_state_survives_a_checkpoint_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "ckpt.pt"
    checkpointing.save_checkpoint(path, {"rng": checkpointing.capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpointing.restore_rng_state(checkpointing.load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpointing.save_checkpoint(path, {"step": 1})

    def crash(obj, f, *args, **kwargs):
        f.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpointing.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert checkpointing.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        checkpointing.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        checkpointing.load_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------------------- sample order
def test_epoch_order_skips_and_seeds_by_global_position():
    from torch.utils.data import DistributedSampler

    def order(world: int, rank: int, skip: int = 0) -> list[tuple[int, int]]:
        o = EpochOrder(DistributedSampler(range(20), num_replicas=world, rank=rank, seed=5), seed=7, rank=rank, world_size=world)
        o.set_epoch(3, skip=skip)
        return list(o)

    alone = order(1, 0)
    assert order(1, 0, skip=6) == alone[6:]
    assert alone[4][1] == sample_seed(7, 3, 4)
    # Two ranks see the samples of one process, each with the seed it would have had there.
    assert sorted(order(2, 0) + order(2, 1)) == sorted(alone)
    assert order(2, 1)[2] == alone[2 * 2 + 1]


# ------------------------------------------------------------------------ student set-up
def test_fine_tuning_reinitialises_heads_and_resamples_positions(tmp_path):
    source = tiny_model(num_labels=10)
    source.save_pretrained(tmp_path / "source")
    config = TrainConfig(model=str(tmp_path / "source"), image_size=24, drop_path=0.0)
    with pytest.warns(UserWarning, match="newly initialised"):
        student = build_student(config, {0: "cat", 1: "dog", 2: "fox"})
    assert student.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert student.cls_classifier.weight.shape == (3, 32) and student.distillation_classifier.weight.shape == (3, 32)
    assert student.config.image_size == 24
    expected_positions = source.deit.embeddings.interpolated_position_embeddings(6, 6)
    torch.testing.assert_close(student.deit.embeddings.position_embeddings, expected_positions, rtol=0, atol=0)
    torch.testing.assert_close(student.deit.encoder.layer[1].output.dense.weight, source.deit.encoder.layer[1].output.dense.weight, rtol=0, atol=0)
    # The student runs at the new resolution without interpolating at run time.
    assert student(torch.randn(1, 3, 24, 24)).logits.shape == (1, 3)


def test_architecture_overrides_need_a_preset(tmp_path):
    tiny_model().save_pretrained(tmp_path / "source")
    with pytest.raises(ValueError, match="fresh model"):
        build_student(TrainConfig(model=str(tmp_path / "source"), depth=3), {0: "a"})


def test_settings_are_validated():
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(tiny_config("unused", distillation_type="hard"))
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8").validate()


# ----------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("fast_kernels", FAST_KERNELS)
def test_fit_writes_a_complete_run(tmp_path, fast_kernels):
    from deit.auto import AutoModelForImageClassification

    train_set, val_set = datasets()
    config = tiny_config(str(tmp_path / "run"), model_ema=True, model_ema_decay=0.9, fast_kernels=fast_kernels)
    result = fit(config, train_dataset=train_set, val_dataset=val_set)
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert {"train_loss", "lr", "val_acc1", "val_acc5", "val_acc1_cls", "val_acc1_dist", "ema_acc1"} <= set(lines[-1])
    assert lines[-1]["global_step"] == 2 * len(train_set) // 8 == len(result.step_losses)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("best", "last", "ema"):
        assert (run / name / "config.json").is_file() and (run / name / "preprocessor_config.json").is_file()
    # The colours are easy: two epochs learn them.
    assert lines[-1]["val_acc1"] > 60.0
    last = AutoModelForImageClassification.from_pretrained(run / "last")
    assert last.config.id2label == {0: "red", 1: "green", 2: "blue"}
    assert max_abs_difference(last.state_dict(), result.model.state_dict()) == 0.0
    state = checkpointing.load_checkpoint(run / "checkpoint.pt")
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (2, 0, lines[-1]["global_step"])


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    train_set, val_set = datasets()
    big = fit(tiny_config(str(tmp_path / "a"), epochs=1, batch_size=8), train_dataset=train_set, val_dataset=val_set)
    accumulated = fit(tiny_config(str(tmp_path / "b"), epochs=1, batch_size=4, accum_steps=2), train_dataset=train_set, val_dataset=val_set)
    # Same samples per optimizer step (the global order does not depend on the micro-batch size).
    np.testing.assert_allclose(big.step_losses, accumulated.step_losses, rtol=1e-5, atol=1e-6)
    assert max_abs_difference(big.model.state_dict(), accumulated.model.state_dict()) < 1e-5


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_follows_full_precision(tmp_path, amp):
    train_set, val_set = datasets()
    full = fit(tiny_config(str(tmp_path / "fp32"), epochs=1), train_dataset=train_set, val_dataset=val_set)
    mixed = fit(tiny_config(str(tmp_path / amp), epochs=1, amp=amp), train_dataset=train_set, val_dataset=val_set)
    # Same data and steps; only the rounding differs (bf16 keeps 8 bits of mantissa).
    np.testing.assert_allclose(mixed.step_losses, full.step_losses, atol=0.02)


class NaNAfter(torch.nn.Module):
    """A teacher whose logits turn into NaN from its ``calls``-th call on."""

    def __init__(self, calls: int, num_classes: int = 3) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, num_classes)
        self.remaining = calls

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.remaining -= 1
        logits = self.head(images.flatten(1))
        return logits if self.remaining > 0 else logits * math.nan


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train_set, val_set = datasets()
    config = tiny_config(str(tmp_path / "run"), checkpoint_every_steps=1, distillation_type="soft")
    # One call checks the class count; steps 1..3 are fine; step 4 gets NaN teacher logits.
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        fit(config, teacher=NaNAfter(calls=5), train_dataset=train_set, val_dataset=val_set)
    state = checkpointing.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_huge_learning_rate_is_caught(tmp_path):
    train_set, val_set = datasets()
    config = tiny_config(str(tmp_path / "run"), lr=1e9, warmup_epochs=0, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        fit(config, train_dataset=train_set, val_dataset=val_set)
    kept = tmp_path / "run" / "checkpoint.pt"
    if kept.exists():  # whatever was kept holds finite weights
        assert all(torch.isfinite(v).all() for v in checkpointing.load_checkpoint(kept)["model"].values())


def test_teacher_with_another_class_count_is_refused(tmp_path):
    train_set, val_set = datasets()
    config = tiny_config(str(tmp_path / "run"), distillation_type="hard")
    with pytest.raises(ValueError, match="teacher predicts 5 classes but the data has 3.*--teacher-finetune-epochs"):
        fit(config, teacher=NaNAfter(calls=100, num_classes=5), train_dataset=train_set, val_dataset=val_set)


def test_too_little_data_for_one_step_is_a_clear_error(tmp_path):
    train_set, val_set = datasets(train_size=6)
    with pytest.raises(ValueError, match="do not fill one step"):
        fit(tiny_config(str(tmp_path / "run")), train_dataset=train_set, val_dataset=val_set)


def test_mid_epoch_checkpoint_from_other_world_size_is_refused(tmp_path):
    from deit.train.engine import Trainer

    train_set, val_set = datasets()
    fit(tiny_config(str(tmp_path / "run"), stop_after_steps=3), train_dataset=train_set, val_dataset=val_set)
    trainer = Trainer(tiny_config(str(tmp_path / "run"), resume="auto"), DistributedContext(0, 1, 0, torch.device("cpu")), train_set=train_set, val_set=val_set)
    state = checkpointing.load_checkpoint(tmp_path / "run")
    state["world_size"] = 2
    checkpointing.save_checkpoint(tmp_path / "run" / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(ValueError, match="middle of an epoch by 2 process"):
        trainer.resume("auto")


# --------------------------------------------------------------------------- deit train
def write_image_folder(root, per_class: int = 10) -> None:
    from PIL import Image

    g = np.random.default_rng(0)
    for label, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = (g.random((20, 20, 3)) * 120).astype(np.uint8)
            pixels[..., label] += 120
            Image.fromarray(pixels).save(root / name / f"{k}.png")


TINY_FLAGS = ["--image-size", "16", "--patch-size", "4", "--hidden-size", "32", "--depth", "2", "--heads", "2", "--batch-size", "8",
              "--epochs", "1", "--num-workers", "0", "--no-progress", "--no-model-ema", "--aa", "none"]


def test_deit_train_cli_with_a_checkpoint_teacher(tmp_path, capsys):
    from deit.cli import main

    write_image_folder(tmp_path / "data")
    teacher = tiny_model(num_labels=5)
    teacher.save_pretrained(tmp_path / "teacher")
    common = ["train", "--data", str(tmp_path / "data"), *TINY_FLAGS, "--teacher", str(tmp_path / "teacher")]

    assert main([*common, "--output", str(tmp_path / "refused")]) == 2
    assert "predicts 5 classes but the data set has 3" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()

    # Adapting the teacher's head first makes it usable; hard distillation is the default with a teacher.
    assert main([*common, "--teacher-finetune-epochs", "1", "--output", str(tmp_path / "run")]) == 0
    assert "finished 1 epoch:" in capsys.readouterr().out
    state = checkpointing.load_checkpoint(tmp_path / "run")
    assert state["config"]["teacher_finetune_epochs"] == 1 and state["config"]["distillation_type"] is None
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["train_corrupt_images"] == 0 and "val_acc1_dist" in metrics


def test_deit_train_cli_reports_a_corrupt_image_and_goes_on(tmp_path, capsys):
    from deit.cli import main

    write_image_folder(tmp_path / "data", per_class=8)
    (tmp_path / "data" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # Batches of 2 and no repetition: every image is read in the one epoch, the broken one too.
    flags = [*TINY_FLAGS, "--batch-size", "2", "--no-repeated-aug", "--output", str(tmp_path / "run")]
    assert main(["train", "--data", str(tmp_path / "data"), *flags]) == 0
    err = capsys.readouterr().err
    assert "note: skipped 1 unreadable " in err and "broken.png" in err and "CorruptImageWarning" not in err
    entry = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert entry["train_corrupt_images"] + entry["val_corrupt_images"] == 1
