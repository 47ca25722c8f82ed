"""Issue 29: the switches of timm's train.py and the transformers Trainer, through ``fit``.

--compile (against eager), --layer-decay (each group's lr against the formula), --grad-checkpointing,
--log tensorboard / wandb, the model card, push_to_hub up to the network boundary, hf: teachers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from fit_helpers import CLASSES, IMAGE_SIZE, datasets, max_abs_difference, one_thread  # noqa: F401 (fixture)
from fit_helpers import tiny_config as helpers_tiny_config

from hf_teachers import save_transformers_resnet

from deit.config import DeiTConfig
from deit.hf_api import HubUploadError
from deit.modeling import DeiTForImageClassificationWithTeacher, DeiTForMaskedImageModeling
from deit.train import compiling
from deit.train.compiling import CompileUnavailableError
from deit.train.engine import fit
from deit.train.optim import WarmupCosineSchedule, build_optimizer
from deit.train.student import starts_from_masked_image_modeling
from deit.train.teacher import load_teacher


def tiny_config(output: str, **overrides):
    """The helpers' two-block DeiT, with PyTorch's own kernels (no start-up measurement of oneDNN's)."""
    return helpers_tiny_config(output, **{"fast_kernels": "off", **overrides})


def tiny_model(depth: int = 3) -> DeiTForImageClassificationWithTeacher:
    config = DeiTConfig.from_preset("deit-tiny-distilled-patch16-224", image_size=16, patch_size=4, hidden_size=16,
                                    intermediate_size=32, num_hidden_layers=depth, num_attention_heads=2, num_labels=3)
    return DeiTForImageClassificationWithTeacher(config)


# ------------------------------------------------------------------ --layer-decay
def expected_scale(name: str, depth: int, rate: float) -> float:
    """The formula, written from the parameter's name: heads and final norm 1, block i rate^(N-i), embeddings rate^(N+1)."""
    if name.startswith("deit.embeddings."):
        return rate ** (depth + 1)
    if name.startswith("deit.encoder.layer."):
        return rate ** (depth - int(name.split(".")[3]))
    assert name.startswith(("deit.layernorm.", "cls_classifier.", "distillation_classifier.")), name
    return 1.0


@pytest.mark.parametrize("per_step", [True, False])
def test_layer_decay_gives_every_parameter_the_formulas_learning_rate(per_step):
    depth, rate, peak = 3, 0.75, 1e-3
    model = tiny_model(depth)
    optimizer = build_optimizer(model, peak, 0.05, layer_decay=rate)
    schedule = WarmupCosineSchedule(optimizer, peak_lr=peak, epochs=4, steps_per_epoch=5, warmup_epochs=1, per_step=per_step)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert len(group_of) == len(list(model.parameters()))
    for step in (0, 3, 7, 19):
        lr = schedule.apply(step)
        for name, parameter in model.named_parameters():
            group = group_of[id(parameter)]
            assert group["lr"] == pytest.approx(lr * expected_scale(name, depth, rate), rel=1e-12), (name, step)
            decayed = parameter.ndim > 1 and not any(t in name for t in ("token", "position_embeddings"))
            assert group["weight_decay"] == (0.05 if decayed else 0.0), name
    # Each block one step less than the next: the ratio of neighbouring blocks' rates is the decay.
    lrs = {name.split(".")[3]: group_of[id(p)]["lr"] for name, p in model.named_parameters() if ".layer." in name}
    assert lrs["1"] / lrs["0"] == pytest.approx(1 / rate) and lrs["2"] / lrs["1"] == pytest.approx(1 / rate)


def test_without_layer_decay_the_recipes_two_groups_stay():
    groups = build_optimizer(tiny_model(), 1e-3, 0.05).param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and all("lr_scale" not in g for g in groups)


def test_layer_decay_defaults_on_for_a_masked_image_modeling_checkpoint(tmp_path):
    config = DeiTConfig.from_preset("deit-tiny-distilled-patch16-224", image_size=16, patch_size=4, hidden_size=16,
                                    intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, encoder_stride=4)
    DeiTForMaskedImageModeling(config).save_pretrained(tmp_path / "pretrained")
    tiny_model(2).save_pretrained(tmp_path / "classifier")
    assert starts_from_masked_image_modeling(str(tmp_path / "pretrained"))
    assert not starts_from_masked_image_modeling(str(tmp_path / "classifier"))
    assert not starts_from_masked_image_modeling("deit-tiny-distilled-patch16-224")


def test_layer_decay_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match="layer_decay must be in"):
        tiny_config(str(tmp_path), layer_decay=1.5).validate()


# ------------------------------------------------------------------ --compile
def test_compiled_training_follows_eager(tmp_path):
    """Three optimizer steps compiled (aot_eager: TorchDynamo's graph capture and AOTAutograd's traced
    forward and backward, without generated kernels) against eager: the step losses and the weights
    within 1e-5 (float32 rounding of re-ordered ops). Inductor's kernels: benchmarks/compile_training.py."""
    train_set, val_set = datasets()
    torch._dynamo.reset()
    runs = {}
    for backend in (None, "aot_eager"):
        config = tiny_config(str(tmp_path / str(backend)), epochs=1, stop_after_steps=3, compile=backend)
        runs[backend] = fit(config, train_dataset=train_set, val_dataset=val_set)
    eager, compiled = runs[None], runs["aot_eager"]
    assert len(compiled.step_losses) == 3
    assert compiled.step_losses == pytest.approx(eager.step_losses, abs=1e-5)
    assert max_abs_difference(compiled.model.state_dict(), eager.model.state_dict()) < 1e-5
    assert compiled.step_losses[0] != compiled.step_losses[2]  # it trained


def test_compile_where_the_platform_cannot_is_one_clear_error(tmp_path, monkeypatch):
    train_set, val_set = datasets()
    monkeypatch.setattr(compiling, "_cpp_compiler", lambda: None)
    with pytest.raises(CompileUnavailableError, match="needs a C\\+\\+ compiler .* train without --compile"):
        fit(tiny_config(str(tmp_path / "a"), compile="inductor", device="cpu"), train_dataset=train_set, val_dataset=val_set)
    with pytest.raises(CompileUnavailableError, match="--compile nonsense: no such torch.compile backend"):
        fit(tiny_config(str(tmp_path / "b"), compile="nonsense"), train_dataset=train_set, val_dataset=val_set)


# ------------------------------------------------------------------ --grad-checkpointing
def test_grad_checkpointing_trains_the_same_steps(tmp_path):
    train_set, val_set = datasets()
    plain = fit(tiny_config(str(tmp_path / "plain"), epochs=1, stop_after_steps=2), train_dataset=train_set, val_dataset=val_set)
    checkpointed = fit(tiny_config(str(tmp_path / "ckpt"), epochs=1, stop_after_steps=2, grad_checkpointing=True),
                       train_dataset=train_set, val_dataset=val_set)
    assert checkpointed.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    assert checkpointed.step_losses == pytest.approx(plain.step_losses, abs=1e-6)
    assert max_abs_difference(checkpointed.model.state_dict(), plain.model.state_dict()) < 1e-6


# ------------------------------------------------------------------ --log
def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_step_and_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    train_set, val_set = datasets()
    result = fit(tiny_config(str(tmp_path), log=("tensorboard",)), train_dataset=train_set, val_dataset=val_set)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(result.step_losses, rel=1e-6)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, len(result.step_losses) + 1))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_acc1", "val_acc1_cls", "val_acc1_dist", "val_loss", "lr"):
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars[f"epoch/{key}"]] == [(m["global_step"], m[key]) for m in metrics], key


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A run whose process died after step 6 with its checkpoint at step 4, resumed: steps 5 and 6 are
    trained again, and TensorBoard holds each step once, with the values of an uninterrupted run."""
    import shutil

    pytest.importorskip("tensorboard")
    train_set, val_set = datasets()
    config = tiny_config(str(tmp_path), log=("tensorboard",))
    fit(config, stop_after_steps=4, train_dataset=train_set, val_dataset=val_set)
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "step4.pt")
    fit(config, resume="auto", stop_after_steps=6, train_dataset=train_set, val_dataset=val_set)
    shutil.copy(tmp_path / "step4.pt", tmp_path / "checkpoint.pt")  # the checkpoint of step 6 was never written
    resumed = fit(config, resume="auto", train_dataset=train_set, val_dataset=val_set)
    uninterrupted = fit(tiny_config(str(tmp_path / "whole")), train_dataset=train_set, val_dataset=val_set)
    assert len(resumed.step_losses) == len(uninterrupted.step_losses) - 4
    steps = read_scalars(tmp_path / "tensorboard")["train/loss"]
    assert [step for step, _ in steps] == list(range(1, len(uninterrupted.step_losses) + 1))
    assert [value for _, value in steps] == pytest.approx(uninterrupted.step_losses, rel=1e-5)


def test_wandb_offline_logs_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    train_set, val_set = datasets()
    fit(tiny_config(str(tmp_path), epochs=1, log=("wandb",)), train_dataset=train_set, val_dataset=val_set)
    assert list((tmp_path / "wandb").rglob("*.wandb"))


def test_an_unknown_log_is_refused(tmp_path):
    with pytest.raises(ValueError, match="log must name some of"):
        tiny_config(str(tmp_path), log=("mlflow",)).validate()


# ------------------------------------------------------------------ the model card and the Hub
def test_saved_checkpoints_carry_a_model_card_the_hub_reads(tmp_path):
    from huggingface_hub import ModelCard

    train_set, val_set = datasets()
    fit(tiny_config(str(tmp_path), layer_decay=0.8), train_dataset=train_set, val_dataset=val_set)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    card = ModelCard.load(tmp_path / "last" / "README.md")
    assert card.data.library_name == "deit" and "image-classification" in card.data.tags
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values["top-1 (CLS head)"] == pytest.approx(metrics[-1]["val_acc1_cls"], abs=1e-4)
    assert values["top-1 (DIST head)"] == pytest.approx(metrics[-1]["val_acc1_dist"], abs=1e-4)
    assert "| layer_decay | 0.8 |" in card.text and "| epochs | 2 |" in card.text and "No teacher" in card.text
    assert not any("EMA" in r.metric_name for r in card.data.eval_results)
    best = max(metrics, key=lambda m: m["val_acc1"])
    best_card = ModelCard.load(tmp_path / "best" / "README.md")
    assert {r.metric_name: r.metric_value for r in best_card.data.eval_results}["top-1 (CLS and DIST heads averaged)"] == pytest.approx(best["val_acc1"], abs=1e-4)


def test_push_to_hub_offline_is_one_clear_error_and_uploads_through_the_hub_api(tmp_path, monkeypatch):
    import huggingface_hub

    model = tiny_model(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUploadError, match="HF_HUB_OFFLINE is set"):
        model.push_to_hub("someone/tiny")
    # Past the checks, the upload goes through HfApi; the network boundary is replaced by a recorder.
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        from pathlib import Path

        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return "https://huggingface.co/someone/tiny/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert model.push_to_hub("someone/tiny", token="hf_test") == "https://huggingface.co/someone/tiny/commit/0"
    assert calls[0][:2] == ("create", "someone/tiny") and calls[1] == ("upload", "someone/tiny", ["config.json", "model.safetensors"])

    def offline_upload(self, **kw):
        raise huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", offline_upload)
    with pytest.raises(HubUploadError, match="could not push .* someone/tiny \\(OfflineModeIsEnabled"):
        model.push_to_hub("someone/tiny", token="hf_test")


def test_a_run_that_cannot_push_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train_set, val_set = datasets()
    with pytest.raises(HubUploadError, match="someone/run: HF_HUB_OFFLINE is set"):
        fit(tiny_config(str(tmp_path), push_to_hub="someone/run"), train_dataset=train_set, val_dataset=val_set)
    assert not (tmp_path / "checkpoint.pt").exists()


# ------------------------------------------------------------------ hf: teachers
def test_hf_teacher_uses_its_own_preprocessor_config(tmp_path):
    reference = save_transformers_resnet(tmp_path / "resnet", CLASSES)
    student_mean, student_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher = load_teacher(f"hf:{tmp_path / 'resnet'}", num_classes=3, student_mean=student_mean, student_std=student_std,
                           student_input_size=IMAGE_SIZE)
    assert teacher.input_size == 20 and teacher.class_names == list(CLASSES)
    assert "preprocessor_config.json" in teacher.input_description
    batch = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # The reference: back to pixels with the student's statistics, normalised with the teacher's, resized to its size.
    pixels = batch * torch.tensor(student_std).view(1, 3, 1, 1) + torch.tensor(student_mean).view(1, 3, 1, 1)
    teacher_input = (pixels - torch.tensor((0.5, 0.4, 0.3)).view(1, 3, 1, 1)) / torch.tensor((0.2, 0.25, 0.3)).view(1, 3, 1, 1)
    teacher_input = torch.nn.functional.interpolate(teacher_input, size=(20, 20), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = reference(pixel_values=teacher_input).logits
    torch.testing.assert_close(teacher(batch), expected, rtol=1e-5, atol=1e-5)


def test_hf_teacher_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="hf:.*empty: not an AutoModelForImageClassification checkpoint"):
        load_teacher(f"hf:{tmp_path / 'empty'}", num_classes=3)


def test_training_with_an_hf_teacher_distills_and_records_it_in_the_card(tmp_path):
    from huggingface_hub import ModelCard

    save_transformers_resnet(tmp_path / "resnet", CLASSES)
    train_set, val_set = datasets()
    result = fit(tiny_config(str(tmp_path / "run"), epochs=1, teacher=f"hf:{tmp_path / 'resnet'}", distillation_type="soft"),
                 train_dataset=train_set, val_dataset=val_set)
    assert all(math.isfinite(loss) for loss in result.step_losses)
    card = ModelCard.load(tmp_path / "run" / "last" / "README.md")
    assert "knowledge-distillation" in card.data.tags
    assert f"| teacher | `hf:{tmp_path / 'resnet'}` |" in card.text and "| distillation type | soft |" in card.text


def test_fine_tuning_a_deit_pretrain_checkpoint_decays_layers_by_default_and_both_cards_load(tmp_path, capsys):
    from huggingface_hub import ModelCard
    from pretrain_helpers import tiny_pretrain_config

    from deit.train.pretraining import pretrain

    train_set, val_set = datasets()
    pretrain(tiny_pretrain_config(str(tmp_path / "pre"), epochs=1, stop_after_steps=None), train_dataset=train_set, val_dataset=val_set)
    pre_card = ModelCard.load(tmp_path / "pre" / "last" / "README.md")
    assert "masked-image-modeling" in pre_card.data.tags and "| layer_decay | none |" in pre_card.text
    capsys.readouterr()
    start = str(tmp_path / "pre" / "last")
    architecture = dict(image_size=None, patch_size=None, hidden_size=None, depth=None, heads=None)
    fit(tiny_config(str(tmp_path / "fine"), model=start, epochs=1, **architecture), train_dataset=train_set, val_dataset=val_set)
    assert "note: layer decay 0.65" in capsys.readouterr().err
    assert "| layer_decay | 0.65 |" in ModelCard.load(tmp_path / "fine" / "last" / "README.md").text
    fit(tiny_config(str(tmp_path / "off"), model=start, epochs=1, layer_decay=1.0, **architecture), train_dataset=train_set, val_dataset=val_set)
    assert "| layer_decay | none |" in ModelCard.load(tmp_path / "off" / "last" / "README.md").text
