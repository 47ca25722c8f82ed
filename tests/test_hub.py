"""Hub names resolved through a Hugging Face cache tree the tests build themselves (no network)."""

from __future__ import annotations

import json
import socket

import pytest
import torch

import deit
from deit.auto import AutoModelForImageClassification
from deit.cli import main as cli
from deit.checkpoint import save_timm
from deit.hub import ModelNotFoundError

REPO = "facebook/deit-base-distilled-patch16-224"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SMALL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=3)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fake_cache(root, repo: str, files: dict[str, bytes], commit: str = COMMIT, refs=("main",)):
    """The folder layout huggingface_hub keeps: models--org--name/{refs/<ref>, snapshots/<commit>/...}."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs").mkdir()
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def hf_files(model: deit.DeiTPreTrainedModel, tmp_path) -> dict[str, bytes]:
    model.save_pretrained(tmp_path / "saved")
    return {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir()}


@pytest.fixture
def teacher_model():
    torch.manual_seed(0)
    return deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**SMALL)).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_offline_hub_name_loads_from_cache_dir(tmp_path, offline, teacher_model):
    cache = tmp_path / "cache"
    fake_cache(cache, REPO, hf_files(teacher_model, tmp_path))
    model = AutoModelForImageClassification.from_pretrained(REPO, cache_dir=cache)
    assert type(model) is deit.DeiTForImageClassificationWithTeacher
    assert same_weights(model, teacher_model)


def test_cache_location_and_offline_mode_set_after_import_are_respected(tmp_path, monkeypatch, teacher_model):
    # huggingface_hub read its environment when it was imported; these are set afterwards.
    import huggingface_hub  # noqa: F401

    cache = tmp_path / "elsewhere"
    fake_cache(cache, REPO, hf_files(teacher_model, tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = deit.DeiTForImageClassificationWithTeacher.from_pretrained(REPO)
    assert same_weights(model, teacher_model)


def test_revision_by_commit_and_by_tag(tmp_path, offline, teacher_model):
    cache = tmp_path / "cache"
    fake_cache(cache, REPO, hf_files(teacher_model, tmp_path), refs=("main", "v1.0"))
    for revision in (COMMIT, "v1.0"):
        model = AutoModelForImageClassification.from_pretrained(REPO, cache_dir=cache, revision=revision)
        assert same_weights(model, teacher_model)
    with pytest.raises(ModelNotFoundError):
        AutoModelForImageClassification.from_pretrained(REPO, cache_dir=cache, revision="v2.0")


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only"])
def test_offline_and_not_cached_is_one_clear_error(tmp_path, monkeypatch, how):
    kwargs = {"cache_dir": tmp_path / "empty-cache"}
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        kwargs["local_files_only"] = True
    with pytest.raises(ModelNotFoundError) as err:
        AutoModelForImageClassification.from_pretrained(REPO, **kwargs)
    message = str(err.value)
    assert REPO in message and "offline" in message and "not in the Hugging Face cache" in message
    assert "local path" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one error, not a chain


def test_cli_reports_offline_miss_in_one_line(tmp_path, offline, capsys):
    assert cli(["convert", REPO, str(tmp_path / "out"), "--cache-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "local path" in err


def test_timm_repo_in_cache_loads_with_inferred_config(tmp_path, offline):
    # The timm/ repos on the Hub hold timm-layout weights and timm's own config.json.
    torch.manual_seed(0)
    source = deit.ViTForImageClassification(deit.ViTConfig(**SMALL, layer_norm_eps=1e-6)).eval()
    save_timm(source, tmp_path / "w.safetensors")
    timm_config = json.dumps({"architecture": "vit_custom", "num_classes": 3}).encode()
    cache = tmp_path / "cache"
    fake_cache(cache, "timm/vit_custom.test", {"model.safetensors": (tmp_path / "w.safetensors").read_bytes(), "config.json": timm_config})
    model = AutoModelForImageClassification.from_pretrained("timm/vit_custom.test", cache_dir=cache, num_attention_heads=4)
    assert type(model) is deit.ViTForImageClassification
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((model(x).logits - source(x).logits).abs().max()) < 1e-4


def test_convert_command_reads_hub_cache_and_keeps_processor(tmp_path, offline, teacher_model):
    files = hf_files(teacher_model, tmp_path)
    files["preprocessor_config.json"] = json.dumps({"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}}).encode()
    cache = tmp_path / "cache"
    fake_cache(cache, REPO, files)
    out = tmp_path / "out"
    assert cli(["convert", REPO, str(out), "--cache-dir", str(cache)]) == 0
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 40, "width": 40}
    assert same_weights(deit.DeiTForImageClassificationWithTeacher.from_pretrained(out), teacher_model)
