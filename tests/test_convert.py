"""timm / original-DeiT / Hugging Face layouts: loading, conversion both ways, config inference.

The reference is timm itself: models built with random weights, saved in timm and original
(``{"model": ...}``) layout, loaded with ``deit``; logits must match within 1e-4 (float32).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

timm = pytest.importorskip("timm")
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

import deit  # noqa: E402
from deit import PRESETS, DeiTConfig  # noqa: E402
from deit.auto import AutoModel, AutoModelForImageClassification  # noqa: E402
from deit.checkpoint import CheckpointError  # noqa: E402
from deit.cli import main as cli  # noqa: E402
from deit.checkpoint import save_timm  # noqa: E402
from deit.layouts import infer_timm_config, timm_model_kwargs, timm_to_hf, to_timm_layout  # noqa: E402

ATOL = 1e-4
# A small DeiT: the tiny width (so 3 heads are inferred), two blocks, 4x4 patches of 8 pixels.
SMALL = dict(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=7)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, LayerNorms and biases included (timm inits them to 1 / 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def timm_model(distilled: bool, seed: int = 0, **overrides) -> torch.nn.Module:
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    return perturbed(cls(**{**SMALL, **overrides}), seed)


def images(batch: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def save_layout(model: torch.nn.Module, directory, layout: str):
    """The model's weights as timm safetensors, an original DeiT .pth ({"model": ...}), or a .bin."""
    state = model.state_dict()
    if layout == "timm":
        path = directory / "timm.safetensors"
        save_file(state, str(path))
    elif layout == "original":
        path = directory / "deit_checkpoint.pth"
        torch.save({"model": state}, path)
    else:
        path = directory / "pytorch_model.bin"
        torch.save(state, path)
    return path


# ---------------------------------------------------------------------------- timm -> ours
@pytest.mark.parametrize("distilled", [True, False], ids=["distilled", "plain"])
@pytest.mark.parametrize("layout", ["timm", "original", "bin"])
def test_timm_and_original_checkpoints_match_timm(tmp_path, distilled, layout):
    reference = timm_model(distilled)
    path = save_layout(reference, tmp_path, layout)
    model = AutoModelForImageClassification.from_pretrained(path)

    expected_cls = deit.DeiTForImageClassificationWithTeacher if distilled else deit.ViTForImageClassification
    assert type(model) is expected_cls
    assert model.config.model_type == ("deit" if distilled else "vit")
    assert model.config.layer_norm_eps == 1e-6
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (192, 2, 3)
    assert (model.config.image_size, model.config.patch_size, model.config.num_labels) == (32, 8, 7)
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


def test_explicit_class_of_other_model_type_gets_its_twin(tmp_path):
    path = save_layout(timm_model(distilled=False), tmp_path, "timm")
    model = deit.DeiTForImageClassificationWithTeacher.from_pretrained(path)
    assert type(model) is deit.ViTForImageClassification
    with pytest.warns(UserWarning, match="pooler"):  # timm has no pooler: it starts fresh, as in transformers
        body = deit.DeiTModel.from_pretrained(path)
    assert type(body) is deit.ViTModel


def test_headless_timm_checkpoint_gives_timm_features(tmp_path):
    reference = timm_model(distilled=True, num_classes=0)
    path = save_layout(reference, tmp_path, "timm")
    model = AutoModelForImageClassification.from_pretrained(path)
    assert model.config.num_labels == 0
    x = images()
    with torch.no_grad():
        # timm's head-less distilled model returns the mean of the CLS and DIST features.
        assert max_diff(model(x).logits, reference(x)) < ATOL


def test_other_widths_take_heads_from_the_caller(tmp_path):
    reference = timm_model(distilled=True, embed_dim=96, num_heads=4)
    path = save_layout(reference, tmp_path, "timm")
    with pytest.warns(UserWarning, match="assuming 1 attention head"):
        guessed = AutoModelForImageClassification.from_pretrained(path)
    assert guessed.config.num_attention_heads == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # heads given: nothing is guessed, nothing to warn about
        model = AutoModelForImageClassification.from_pretrained(path, num_attention_heads=4)
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


@pytest.mark.parametrize("distilled", [True, False], ids=["distilled", "plain"])
def test_position_embeddings_resampled_like_timm(tmp_path, distilled):
    path = save_layout(timm_model(distilled), tmp_path, "timm")
    model = AutoModelForImageClassification.from_pretrained(path, image_size=48)
    # timm's own loader resamples the same weights for a 48-pixel model.
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    reference = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=7),
        img_size=48, patch_size=8, depth=2, num_classes=7,
    ).eval()
    x = images(size=48)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


def test_a_non_deit_vit_without_qkv_bias_loads_exactly(tmp_path):
    reference = timm_model(distilled=False, qkv_bias=False, mlp_ratio=2.0, patch_size=4)
    path = save_layout(reference, tmp_path, "timm")
    model = AutoModelForImageClassification.from_pretrained(path)
    assert model.config.qkv_bias is False and model.config.intermediate_size == 384
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(init_values=1e-5), "ls1.gamma"),
        (dict(reg_tokens=4), "reg_token"),
        (dict(global_pool="avg"), "fc_norm"),
        (dict(class_token=False, global_pool="avg"), "fc_norm"),
        (dict(global_pool="map"), "attn_pool"),
        (dict(qk_norm=True), "q_norm"),
        (dict(pre_norm=True), "norm_pre"),
        (dict(no_embed_class=True), "pos_embed"),
        (dict(final_norm=False), "norm.weight"),
    ],
    ids=["layer-scale", "registers", "avg-pool", "no-cls-token", "map-pool", "qk-norm", "pre-norm", "no-embed-class", "no-final-norm"],
)
def test_vit_variants_we_cannot_reproduce_are_refused(tmp_path, kwargs, key):
    path = save_layout(VisionTransformer(**{**SMALL, **kwargs}), tmp_path, "timm")
    with pytest.raises(CheckpointError) as err:
        AutoModelForImageClassification.from_pretrained(path)
    assert str(path) in str(err.value) and key in str(err.value)


# ------------------------------------------------------------- the released architectures
TIMM_NAMES = [name.replace("-", "_") for name in PRESETS]


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_released_architectures_infer_their_preset(name):
    # Shapes only: the timm model lives on the meta device, so no memory or time is spent.
    reference = timm.create_model(name, device="meta")
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    inferred = infer_timm_config(shapes, name)
    preset = DeiTConfig.from_preset(name.replace("_", "-"))
    for field in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size", "num_labels"):
        assert inferred[field] == getattr(preset, field), field

    converted, config = timm_to_hf(reference.state_dict(), name)
    with torch.device("meta"):
        ours = AutoModelForImageClassification.from_config(deit.config.config_from_dict(config))
    own = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in converted.items()}


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "deit_base_patch16_384"])
def test_real_size_models_match_timm(tmp_path, name):
    # One image each: the base model at 384 pixels is the largest released DeiT.
    torch.manual_seed(0)
    reference = perturbed(timm.create_model(name))
    path = save_layout(reference, tmp_path, "original")
    model = AutoModelForImageClassification.from_pretrained(path)
    x = images(batch=1, size=model.config.image_size)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


# ---------------------------------------------------------------------------- ours -> timm
def small_config(**overrides) -> dict:
    return dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384, image_size=32,
                patch_size=8, num_labels=5, layer_norm_eps=1e-6, **overrides)


@pytest.mark.parametrize(
    "cls, timm_cls",
    [
        (deit.DeiTForImageClassificationWithTeacher, VisionTransformerDistilled),
        (deit.ViTForImageClassification, VisionTransformer),
        (deit.DeiTModel, VisionTransformerDistilled),
    ],
)
def test_our_models_convert_to_timm(tmp_path, cls, timm_cls):
    config_cls = deit.ViTConfig if cls.__name__.startswith("ViT") else DeiTConfig
    model = perturbed(cls(config_cls(**small_config())))
    recipe = save_timm(model, tmp_path / "out.safetensors")
    reference = timm_cls(**recipe["kwargs"])
    reference.load_state_dict(load_file(str(tmp_path / "out.safetensors")), strict=True)
    reference.eval()
    x = images()
    with torch.no_grad():
        ours = model(x)
        if cls is deit.DeiTModel:
            # Head-less timm returns the mean of the final CLS and DIST features.
            hidden = ours.last_hidden_state
            assert max_diff((hidden[:, 0] + hidden[:, 1]) / 2, reference(x)) < ATOL
        else:
            assert max_diff(ours.logits, reference(x)) < ATOL


def test_hugging_face_eps_converts_within_tolerance(tmp_path):
    model = perturbed(deit.DeiTForImageClassificationWithTeacher(DeiTConfig(**{**small_config(), "layer_norm_eps": 1e-12})))
    recipe = save_timm(model, tmp_path / "out.safetensors")
    reference = VisionTransformerDistilled(**recipe["kwargs"])
    reference.load_state_dict(load_file(str(tmp_path / "out.safetensors")))
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference.eval()(x)) < ATOL


@pytest.mark.parametrize("cls", [deit.DeiTForImageClassification, deit.DeiTForMaskedImageModeling])
def test_models_without_timm_counterpart_are_refused(cls):
    with pytest.raises(ValueError, match="no timm counterpart"):
        to_timm_layout(cls(DeiTConfig(**small_config())))


def test_timm_model_kwargs_of_a_preset_name_the_timm_model():
    config = DeiTConfig.from_preset("deit-small-distilled-patch16-224")
    assert deit.layouts.timm_model_name(config) == "deit_small_distilled_patch16_224"
    assert timm_model_kwargs(config)["num_heads"] == 6


# ------------------------------------------------------------------------------ the command
def test_convert_command_both_ways(tmp_path, capsys):
    reference = timm_model(distilled=True)
    source = save_layout(reference, tmp_path, "original")
    folder = tmp_path / "hf"
    assert cli(["convert", str(source), str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"] == {"shortest_edge": math.floor(32 / 0.875)}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "deit" and config["layer_norm_eps"] == 1e-6

    x = images()
    with torch.no_grad():
        expected = reference(x)
        assert max_diff(AutoModelForImageClassification.from_pretrained(folder)(x).logits, expected) < ATOL

    back = tmp_path / "back.safetensors"
    assert cli(["convert", str(folder), str(back), "--to", "timm"]) == 0
    assert "VisionTransformerDistilled(" in capsys.readouterr().out
    timm_again = VisionTransformerDistilled(**SMALL)
    timm_again.load_state_dict(load_file(str(back)), strict=True)
    with torch.no_grad():
        assert max_diff(timm_again.eval()(x), expected) < ATOL


def test_convert_command_writes_a_file_timm_create_model_reads(tmp_path, capsys):
    ours = perturbed(deit.ViTForImageClassification(deit.ViTConfig(**small_config())))
    ours.save_pretrained(tmp_path / "hf")
    out = tmp_path / "timm.safetensors"
    assert cli(["convert", str(tmp_path / "hf"), str(out)]) == 0  # .safetensors implies --to timm
    assert "VisionTransformer(" in capsys.readouterr().out
    reference = timm.create_model(
        "deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=5),
        img_size=32, patch_size=8, depth=2, mlp_ratio=2.0, num_classes=5,
    ).eval()
    x = images()
    with torch.no_grad():
        assert max_diff(reference(x), ours(x).logits) < ATOL


def test_convert_command_rejects_a_file_destination_for_hf(tmp_path, capsys):
    source = save_layout(timm_model(distilled=True), tmp_path, "timm")
    assert cli(["convert", str(source), str(tmp_path / "x.safetensors"), "--to", "hf"]) == 2
    assert "folder" in capsys.readouterr().err


# ------------------------------------------------------------------- all three layouts
def test_timm_hub_style_folder_with_timm_config_json(tmp_path):
    reference = timm_model(distilled=False)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    # timm's own config.json names an architecture; it holds no model dimensions.
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "deit_tiny_patch16_224", "num_classes": 7}))
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


@pytest.mark.parametrize("distilled", [True, False], ids=["distilled", "plain"])
def test_transformers_checkpoints_pick_the_right_class(tmp_path, distilled):
    transformers = pytest.importorskip("transformers")
    dims = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=3)
    if distilled:
        reference = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**dims))
    else:
        reference = transformers.ViTForImageClassification(transformers.ViTConfig(**dims))
    perturbed(reference).save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(model).__name__ == type(reference).__name__
    with pytest.warns(UserWarning, match="pooler"):  # classifiers carry no pooler; the bare model starts one fresh
        body = AutoModel.from_pretrained(tmp_path)
    assert type(body).__name__ == ("DeiTModel" if distilled else "ViTModel")
    x = images()
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x).logits) < ATOL
