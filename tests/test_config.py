"""DeiTConfig: defaults, validation, JSON round trips with transformers."""

from __future__ import annotations

import json

import pytest

import deit
from deit.config import PRESETS

transformers = pytest.importorskip("transformers")


def test_defaults_are_the_documented_ones():
    c = deit.DeiTConfig()
    expected = dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=1e-12,
        image_size=224, patch_size=16, num_channels=3, qkv_bias=True, encoder_stride=16, drop_path_rate=0.0,
    )
    for key, value in expected.items():
        assert getattr(c, key) == value, key
    reference = transformers.DeiTConfig()
    for key in expected:
        if key != "drop_path_rate":
            assert getattr(reference, key) == getattr(c, key), key
    assert c.num_labels == 2 and c.problem_type is None and c.model_type == "deit"


def test_config_written_by_transformers_loads_here(tmp_path):
    theirs = transformers.DeiTConfig(hidden_size=96, num_attention_heads=3, id2label={0: "cat", 1: "dog", 2: "eel"}, problem_type="single_label_classification")
    theirs.save_pretrained(tmp_path)
    ours = deit.DeiTConfig.from_pretrained(tmp_path)
    assert ours.hidden_size == 96 and ours.num_attention_heads == 3
    assert ours.id2label == {0: "cat", 1: "dog", 2: "eel"} and ours.label2id == {"cat": 0, "dog": 1, "eel": 2}
    assert ours.num_labels == 3 and ours.problem_type == "single_label_classification"


def test_our_config_loads_in_transformers(tmp_path):
    ours = deit.DeiTConfig(hidden_size=96, num_attention_heads=3, num_hidden_layers=4, layer_norm_eps=1e-6, id2label={0: "a", 1: "b"})
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "DeiTConfig"
    assert (theirs.hidden_size, theirs.num_attention_heads, theirs.num_hidden_layers, theirs.layer_norm_eps) == (96, 3, 4, 1e-6)
    assert theirs.id2label == {0: "a", 1: "b"}


def test_round_trip_keeps_unknown_fields(tmp_path):
    c = deit.DeiTConfig(custom_field=[1, 2], num_labels=4)
    c.save_pretrained(tmp_path)
    again = deit.DeiTConfig.from_pretrained(tmp_path)
    assert again == c and again.custom_field == [1, 2] and again.num_labels == 4
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "deit" and "attn_implementation" not in data


@pytest.mark.parametrize("kwargs,field", [
    (dict(hidden_size=100, num_attention_heads=12), "hidden_size"),
    (dict(image_size=225), "image_size"),
    (dict(hidden_act="swishy"), "hidden_act"),
    (dict(num_hidden_layers=-1), "num_hidden_layers"),
    (dict(intermediate_size=0), "intermediate_size"),
    (dict(patch_size=-16), "patch_size"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(layer_norm_eps=0), "layer_norm_eps"),
    (dict(problem_type="ranking"), "problem_type"),
    (dict(hidden_size="768"), "hidden_size"),
    (dict(qkv_bias="yes"), "qkv_bias"),
    (dict(attn_implementation="flash"), "attn_implementation"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"DeiTConfig.{field}"):
        deit.DeiTConfig(**kwargs)


def test_config_file_with_invalid_or_missing_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deit", "hidden_size": 770}))
    with pytest.raises(ValueError, match=r"config.json: DeiTConfig.hidden_size: 770 is not divisible"):
        deit.DeiTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        deit.DeiTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not a DeiT"):
        deit.DeiTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        deit.DeiTConfig.from_pretrained(tmp_path)


def test_missing_field_takes_default_and_weights_then_disagree(tmp_path):
    """A config.json that lacks a field describes the default architecture; loading weights of
    another size is then an error naming the tensor (not a silent wrong model)."""
    model = deit.DeiTModel(deit.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8))
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"intermediate.dense.weight: checkpoint \(64, 32\) vs model \(3072, 32\)"):
        deit.DeiTModel.from_pretrained(tmp_path)


def test_num_labels_disagreeing_with_id2label():
    with pytest.raises(ValueError, match="num_labels=3 disagrees with id2label"):
        deit.DeiTConfig(num_labels=3, id2label={0: "a", 1: "b"})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_released_architectures(name):
    c = deit.DeiTConfig.from_preset(name)
    size = name.split("-")[1]
    assert c.hidden_size == {"tiny": 192, "small": 384, "base": 768}[size]
    assert c.num_attention_heads == {"tiny": 3, "small": 6, "base": 12}[size]
    assert c.intermediate_size == 4 * c.hidden_size and c.num_hidden_layers == 12 and c.num_labels == 1000
    assert c.image_size == int(name.rsplit("-", 1)[1])
    assert c.model_type == ("deit" if "distilled" in name else "vit")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'deit-huge'"):
        deit.DeiTConfig.from_preset("deit-huge")
