"""Nothing runs code from a checkpoint, and broken files give errors that name the file and key."""

from __future__ import annotations

import os
import pickle
import shlex
import struct

import pytest
import torch
from safetensors.torch import save_file

import deit
from deit.auto import AutoModelForImageClassification
from deit.checkpoint import CheckpointError, read_state_dict
from deit.cli import main as cli
from deit.layouts import to_timm_layout

SMALL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=3)


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**SMALL)).state_dict()


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    # Shows the payload used below really runs when a file is unpickled the unsafe way.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", ["checkpoint.pth", "pytorch_model.bin"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_with_payload_is_refused_and_never_runs(tmp_path, name, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / name
    content = {"model": small_state(), "extra": Payload(marker)}
    if writer == "torch.save":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path)
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_folder_with_payload_is_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "model"
    deit.DeiTConfig(**SMALL).save_pretrained(folder)
    torch.save({**small_state(), "x": Payload(marker)}, folder / "pytorch_model.bin")
    assert cli(["convert", str(folder), str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def write_safetensors(tmp_path) -> "os.PathLike":
    folder = tmp_path / "model"
    deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**SMALL)).save_pretrained(folder)
    return folder / "model.safetensors"


def test_truncated_safetensors_names_the_file(tmp_path):
    path = write_safetensors(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path.parent)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_malformed_safetensors_header_names_the_file(tmp_path):
    path = write_safetensors(tmp_path)
    header = b'{"deit.embeddings.cls_token": {"dtype": "F32", "shape": [1, 1'  # cut JSON
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_wrong_layout_names_the_file_and_a_key(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(path))
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path)
    assert str(path) in str(err.value) and "conv1.weight" in str(err.value)


def test_shape_mismatch_names_the_file_and_the_key(tmp_path):
    path = write_safetensors(tmp_path)
    state = dict(small_state())
    state["deit.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 64)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path.parent)
    message = str(err.value)
    assert str(path) in message and "deit.encoder.layer.0.intermediate.dense.weight" in message


def test_timm_checkpoint_with_inconsistent_block_names_the_key(tmp_path):
    model = deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**{**SMALL, "num_hidden_layers": 2}))
    state = to_timm_layout(model)
    state["blocks.1.attn.qkv.weight"] = torch.zeros(100, 64)
    path = tmp_path / "timm.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path, num_attention_heads=4)
    assert str(path) in str(err.value) and "blocks.1.attn.qkv.weight" in str(err.value)


def test_timm_checkpoint_missing_a_tensor_names_the_key(tmp_path):
    state = to_timm_layout(deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**SMALL)))
    del state["norm.weight"]
    path = tmp_path / "timm.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path, num_attention_heads=4)
    assert str(path) in str(err.value) and "norm.weight" in str(err.value)
