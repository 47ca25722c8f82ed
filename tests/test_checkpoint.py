"""Saving and loading in the Hugging Face layout: safetensors, shards, pytorch_model.bin, key reports."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import deit
from deit.checkpoint import CheckpointError

transformers = pytest.importorskip("transformers")


def tiny(**kw):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
    return deit.DeiTConfig(**{**base, **kw})


def test_save_writes_hf_names_and_config(tmp_path):
    model = deit.DeiTForImageClassificationWithTeacher(tiny())
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "deit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "deit.embeddings.distillation_token" in keys and "distillation_classifier.weight" in keys
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_sharded_safetensors_round_trip(tmp_path, pixels):
    model = deit.DeiTForImageClassification(tiny()).eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    again = deit.DeiTForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(again(pixels).logits, model(pixels).logits, rtol=0, atol=0)
    # transformers reads our shards too.
    theirs = transformers.DeiTForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(theirs(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)


def test_pytorch_model_bin_is_read_safely(tmp_path, pixels):
    model = deit.DeiTForImageClassification(tiny()).eval()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    again = deit.DeiTForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(again(pixels).logits, model(pixels).logits, rtol=0, atol=0)


def test_body_checkpoint_into_head_model_and_back(tmp_path, pixels):
    body = deit.DeiTModel(tiny()).eval()
    body.save_pretrained(tmp_path / "body")
    with pytest.warns(UserWarning, match="newly initialised: cls_classifier.weight, cls_classifier.bias"):
        head = deit.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "body")
    torch.testing.assert_close(head.deit.embeddings.cls_token, body.embeddings.cls_token)
    head.save_pretrained(tmp_path / "head")
    body2 = deit.DeiTModel.from_pretrained(tmp_path / "head")  # heads dropped; pooler is new
    torch.testing.assert_close(body2(pixels).last_hidden_state, body(pixels).last_hidden_state)


def test_mismatched_head_is_an_error_unless_ignored(tmp_path, pixels):
    deit.DeiTForImageClassification(tiny()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint \(5, 32\) vs model \(3, 32\).*ignore_mismatched_sizes=True"):
        deit.DeiTForImageClassification.from_pretrained(tmp_path, num_labels=3)
    with pytest.warns(UserWarning, match="re-initialised: classifier.weight, classifier.bias"):
        model = deit.DeiTForImageClassification.from_pretrained(tmp_path, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, ignore_mismatched_sizes=True)
    assert model(pixels).logits.shape == (2, 3) and model.config.id2label[2] == "c"


def _is_fresh_head(linear: torch.nn.Linear, std: float) -> bool:
    """The recipe's initial draw: truncated normal within 2 std, zero bias (PyTorch's default
    Linear draw, uniform within 1/sqrt(32) = 0.18, is far wider)."""
    return bool(linear.weight.abs().max() <= 2 * std and linear.weight.std() > 0.5 * std and not linear.bias.any())


def test_loading_draws_only_the_weights_the_checkpoint_lacks(tmp_path):
    """from_pretrained skips the initial draw of every weight it loads, and draws the missing
    and re-sized ones as a fresh model would (a new head on a body, a classifier for new labels)."""
    body = deit.DeiTModel(tiny()).eval()
    with torch.no_grad():
        body.embeddings.cls_token.fill_(0.5)  # a loaded weight that no initial draw produces
        body.encoder.layer[0].output.dense.weight.fill_(0.25)
    body.save_pretrained(tmp_path / "body")
    std = body.config.initializer_range
    with pytest.warns(UserWarning, match="newly initialised"):
        head = deit.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "body")
    # The heads' modules hold no loaded weight; the embeddings' draw would have replaced the 0.5.
    assert _is_fresh_head(head.cls_classifier, std) and _is_fresh_head(head.distillation_classifier, std)
    assert torch.equal(head.deit.embeddings.cls_token, body.embeddings.cls_token)
    assert torch.equal(head.deit.encoder.layer[0].output.dense.weight, body.encoder.layer[0].output.dense.weight)

    head.save_pretrained(tmp_path / "head")
    with pytest.warns(UserWarning, match="re-initialised: cls_classifier.weight, cls_classifier.bias, distillation_classifier"):
        relabelled = deit.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "head", num_labels=3, ignore_mismatched_sizes=True)
    assert _is_fresh_head(relabelled.cls_classifier, std) and relabelled.cls_classifier.weight.shape == (3, 32)
    assert torch.equal(relabelled.deit.embeddings.cls_token, body.embeddings.cls_token)


def test_unexpected_keys_are_reported(tmp_path):
    model = deit.DeiTForImageClassification(tiny())
    model.config.save_pretrained(tmp_path)
    state = dict(model.state_dict(), **{"extra.weight": torch.zeros(2)})
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="does not use were ignored: extra.weight"):
        deit.DeiTForImageClassification.from_pretrained(tmp_path)


def test_truncated_and_corrupt_checkpoints(tmp_path):
    deit.DeiTForImageClassification(tiny()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file"):
        deit.DeiTForImageClassification.from_pretrained(tmp_path)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        deit.DeiTForImageClassification.from_pretrained(tmp_path)
    weights.unlink()
    torch.save(deit.DeiTForImageClassification(tiny()).state_dict(), tmp_path / "pytorch_model.bin")
    raw = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable PyTorch weights file"):
        deit.DeiTForImageClassification.from_pretrained(tmp_path)


def test_missing_folder_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights found"):
        tiny().save_pretrained(tmp_path) or deit.DeiTModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        deit.DeiTModel.from_pretrained(str(tmp_path / "nope" / "x"))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = deit.DeiTForImageClassification(tiny())
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        deit.DeiTForImageClassification(tiny()).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_vit_classes_use_the_vit_prefix(tmp_path, pixels):
    config = deit.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
    model = deit.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    assert "vit.embeddings.cls_token" in load_file(tmp_path / "model.safetensors")
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixels).logits, model(pixels).logits, rtol=0, atol=1e-4)
