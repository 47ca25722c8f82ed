"""The rest of the Hugging Face model and config API that user code calls, checked against
``transformers`` on the same small random checkpoint: config defaults read by ``forward``,
``from_pretrained`` arguments and loading info, the training API the Trainer and PEFT use,
model utilities, and config building / saving.

Outputs are compared with max abs difference <= 1e-4 in float32 (ATOL), the parity tests' bound.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import deit
from deit.config import CONFIG_NAME

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=32, patch_size=8, encoder_stride=8, num_labels=5)
NAMES = ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTForMaskedImageModeling")


def pair(name: str) -> tuple[type, type]:
    return getattr(deit, name), getattr(transformers, name)


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, object]:
    """A reference checkpoint of each class, saved by transformers."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for name in NAMES:
        model = randomized(getattr(transformers, name)(transformers.DeiTConfig(**TINY)))
        model.save_pretrained(root / name)
        folders[name] = root / name
    return folders


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def load_both(name: str, folder, **kwargs):
    ours_cls, theirs_cls = pair(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = ours_cls.from_pretrained(folder, attn_implementation="eager", **kwargs)
        theirs = theirs_cls.from_pretrained(folder, attn_implementation="eager", **kwargs).eval()
    return ours, theirs


# ------------------------------------------------------------ 1. config defaults in forward
@pytest.mark.parametrize("name", NAMES)
def test_config_output_flags_are_the_forward_defaults(saved, pixels, name):
    ours, theirs = load_both(name, saved[name])
    for model in (ours, theirs):
        model.config.output_attentions = True
        model.config.output_hidden_states = True
    with torch.no_grad():
        a, b = ours(pixels), theirs(pixels)
    assert a.attentions is not None and len(a.attentions) == len(b.attentions) == TINY["num_hidden_layers"]
    assert len(a.hidden_states) == len(b.hidden_states) == TINY["num_hidden_layers"] + 1
    for x, y in zip(a.attentions + a.hidden_states, b.attentions + b.hidden_states):
        assert max_diff(x, y) <= ATOL
    for model in (ours, theirs):
        model.config.output_attentions = model.config.output_hidden_states = False
    ours.config.return_dict = False
    # (transformers 5.24's head models fail with config.return_dict=False; their tuple is asked for by argument.)
    with torch.no_grad():
        a, b = ours(pixels), theirs(pixels, return_dict=False)
    assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
    for x, y in zip(a, b):
        assert max_diff(x, y) <= ATOL
    # An explicit argument still wins over the config.
    with torch.no_grad():
        assert ours(pixels, return_dict=True).attentions is None


def test_from_pretrained_output_attentions_sets_the_default(saved, pixels):
    ours, theirs = load_both("DeiTForImageClassification", saved["DeiTForImageClassification"], output_attentions=True)
    assert ours.config.output_attentions is True and theirs.config.output_attentions is True
    with torch.no_grad():
        a, b = ours(pixels).attentions, theirs(pixels).attentions
    assert len(a) == len(b) and max(max_diff(x, y) for x, y in zip(a, b)) <= ATOL


# ------------------------------------------------------------ 2. from_pretrained arguments
def test_constructor_arguments_reach_the_constructor(saved):
    folder = saved["DeiTModel"]
    ours, theirs = load_both("DeiTModel", folder, add_pooling_layer=False, use_mask_token=True)
    assert ours.pooler is None and theirs.pooler is None
    assert ours.embeddings.mask_token is not None and theirs.embeddings.mask_token is not None
    # (transformers 5.x names the layers' modules its own way inside; the embeddings keep the checkpoint names.)
    for model in (ours, theirs):
        assert "embeddings.mask_token" in model.state_dict() and not any(k.startswith("pooler.") for k in model.state_dict())
    assert ours.num_parameters() == theirs.num_parameters()
    assert not hasattr(ours.config, "add_pooling_layer") and not hasattr(ours.config, "use_mask_token")
    assert "add_pooling_layer" not in ours.config.to_dict()


def test_from_pretrained_none_with_config_and_state_dict(saved, pixels):
    folder = saved["DeiTForImageClassification"]
    weights = load_file(str(folder / "model.safetensors"))
    config = deit.DeiTConfig.from_pretrained(folder)
    ours = deit.DeiTForImageClassification.from_pretrained(None, config=config, state_dict=weights)
    reference_config = transformers.DeiTConfig.from_pretrained(folder)
    reference = transformers.DeiTForImageClassification.from_pretrained(None, config=reference_config, state_dict=weights).eval()
    with torch.no_grad():
        assert max_diff(ours(pixels).logits, reference(pixels).logits) <= ATOL


def test_loading_info_has_the_reference_keys_and_values(saved):
    # A bare-body checkpoint into a classifier: the head is missing, the pooler unexpected.
    body = saved["DeiTModel"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ours = deit.DeiTForImageClassification.from_pretrained(body, output_loading_info=True)
        _, theirs = transformers.DeiTForImageClassification.from_pretrained(body, output_loading_info=True)
    assert set(ours) == set(theirs) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert ours["missing_keys"] == theirs["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert ours["unexpected_keys"] == theirs["unexpected_keys"]
    # A new label count: the classifier is re-initialised and reported as mismatched.
    head = saved["DeiTForImageClassification"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ours = deit.DeiTForImageClassification.from_pretrained(head, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True)
        _, theirs = transformers.DeiTForImageClassification.from_pretrained(head, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True)
    assert ours == theirs


def test_weights_with_no_known_name_load_with_a_warning(saved, tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text((saved["DeiTModel"] / CONFIG_NAME).read_text())
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="no weight in .* has a name the model knows"):
        ours, info = deit.DeiTModel.from_pretrained(folder, output_loading_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, reference = transformers.DeiTModel.from_pretrained(folder, output_loading_info=True)
    # (transformers 5.x reports its own inner module names; the count is the comparable part.)
    assert info["missing_keys"] == set(ours.state_dict()) and len(reference["missing_keys"]) == len(info["missing_keys"])
    assert info["unexpected_keys"] == reference["unexpected_keys"] == {"encoder.weight"}


def test_size_mismatch_is_a_runtime_error_and_a_value_error(saved):
    head = saved["DeiTForImageClassification"]
    with pytest.raises(RuntimeError):
        transformers.DeiTForImageClassification.from_pretrained(head, num_labels=3)
    for caught in (RuntimeError, ValueError):
        with pytest.raises(caught, match=r"classifier.weight: checkpoint \(5, 32\) vs model \(3, 32\)"):
            deit.DeiTForImageClassification.from_pretrained(head, num_labels=3)


def test_loading_under_the_meta_device_is_refused(saved):
    head = saved["DeiTForImageClassification"]
    with torch.device("meta"):
        with pytest.raises(RuntimeError, match="meta"):
            transformers.DeiTForImageClassification.from_pretrained(head)
        with pytest.raises(RuntimeError, match=r"torch.device\('meta'\).*from_config"):
            deit.DeiTForImageClassification.from_pretrained(head)


def test_from_config_private_helper(saved):
    for name in NAMES:
        ours_cls, theirs_cls = pair(name)
        ours = ours_cls._from_config(deit.DeiTConfig(**TINY), attn_implementation="eager", dtype=torch.float16)
        theirs = theirs_cls._from_config(transformers.DeiTConfig(**TINY), attn_implementation="eager", dtype=torch.float16)
        assert ours.config.attn_implementation == theirs.config._attn_implementation == "eager"
        assert ours.dtype == theirs.dtype == torch.float16 and ours.config.dtype == theirs.config.dtype
        assert ours.num_parameters() == theirs.num_parameters()


# ------------------------------------------------------------ 3. the training API
def test_gradient_checkpointing_api(pixels):
    labels = torch.tensor([1, 3])
    torch.manual_seed(0)
    model = deit.DeiTForImageClassification(deit.DeiTConfig(**TINY)).train()
    reference = transformers.DeiTForImageClassification(transformers.DeiTConfig(**TINY))
    assert model.supports_gradient_checkpointing is reference.supports_gradient_checkpointing is True
    assert model.is_gradient_checkpointing is False
    model(pixels, labels=labels).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    for kwargs in ({"use_reentrant": False}, {"use_reentrant": True}):
        model.zero_grad()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        assert model.is_gradient_checkpointing is True and model.is_activation_checkpointing is True
        model(pixels, labels=labels).loss.backward()
        for a, b in zip(plain, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # What the Trainer also passes: every n-th layer only, and the saved inputs kept on the host.
    calls = []

    def counting_context():
        calls.append(1)
        return contextlib.nullcontext(), contextlib.nullcontext()

    for every_n_layers, offload, expected_calls in ((2, False, 1), (1, True, 2)):
        model.zero_grad()
        calls.clear()
        model.activation_checkpointing_enable({"use_reentrant": False, "context_fn": counting_context}, every_n_layers=every_n_layers, offload=offload)
        model(pixels, labels=labels).loss.backward()
        assert len(calls) == expected_calls  # one per checkpointed layer
        for a, b in zip(plain, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    model.gradient_checkpointing_disable()
    assert model.is_gradient_checkpointing is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the reference deprecates these names for activation_checkpointing_*
        reference.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert reference.is_gradient_checkpointing is True
        reference.gradient_checkpointing_disable()
        assert reference.is_gradient_checkpointing is False


def test_input_require_grads_on_a_frozen_model(pixels):
    ours = deit.DeiTForImageClassification(deit.DeiTConfig(**TINY))
    theirs = transformers.DeiTForImageClassification(transformers.DeiTConfig(**TINY))
    for model in (ours, theirs):
        model.requires_grad_(False)
        assert model(pixels).logits.requires_grad is False
        model.enable_input_require_grads()
        assert model(pixels).logits.requires_grad is True
        model.disable_input_require_grads()
        assert model(pixels).logits.requires_grad is False


# ------------------------------------------------------------ 4. model utilities
@pytest.mark.parametrize("name", NAMES)
def test_model_utilities_match_the_reference(name):
    ours_cls, theirs_cls = pair(name)
    ours, theirs = ours_cls(deit.DeiTConfig(**TINY)), theirs_cls(transformers.DeiTConfig(**TINY))
    for kwargs in ({}, {"only_trainable": True}, {"exclude_embeddings": True}, {"only_trainable": True, "exclude_embeddings": True}):
        assert ours.num_parameters(**kwargs) == theirs.num_parameters(**kwargs), kwargs
    for model in (ours, theirs):
        model.base_model.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == theirs.num_parameters(only_trainable=True)
    assert type(ours.get_input_embeddings()).__name__ == type(theirs.get_input_embeddings()).__name__ == "DeiTPatchEmbeddings"
    assert ours.get_input_embeddings() is ours.base_model.embeddings.patch_embeddings
    assert ours.get_output_embeddings() is None and theirs.get_output_embeddings() is None
    assert type(ours.base_model).__name__ == type(theirs.base_model).__name__ == "DeiTModel"
    assert (ours.base_model is ours) == (theirs.base_model is theirs)


# ------------------------------------------------------------ 5. config API
def test_config_built_in_steps_and_checked_at_model_build_and_save(tmp_path):
    reference = transformers.DeiTConfig(hidden_size=32)
    reference.num_attention_heads = 4
    config = deit.DeiTConfig(hidden_size=32)
    with pytest.raises(ValueError, match="DeiTConfig.hidden_size: 32 is not divisible by num_attention_heads=12"):
        deit.DeiTModel(config)
    with pytest.raises(ValueError, match="DeiTConfig.hidden_size"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / CONFIG_NAME).exists()
    config.num_attention_heads = 4
    config.intermediate_size = 64
    model = deit.DeiTModel(config)
    assert model.encoder.layer[0].attention.attention.attention_head_size == 8
    config.save_pretrained(tmp_path)
    assert transformers.AutoConfig.from_pretrained(tmp_path).num_attention_heads == reference.num_attention_heads


def test_to_json_file_and_to_diff_dict(tmp_path):
    kwargs = dict(TINY, problem_type="single_label_classification")
    ours, theirs = deit.DeiTConfig(**kwargs), transformers.DeiTConfig(**kwargs)
    diff = theirs.to_diff_dict()
    diff.pop("transformers_version")
    mine = ours.to_diff_dict()
    mine.pop("drop_path_rate")  # ours alone: stochastic depth for training
    assert json.loads(json.dumps(mine)) == json.loads(json.dumps(diff))
    assert "problem_type" not in deit.DeiTConfig().to_diff_dict() and "id2label" not in deit.DeiTConfig().to_diff_dict()
    ours.to_json_file(tmp_path / CONFIG_NAME)
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == ours.to_diff_dict()
    assert transformers.AutoConfig.from_pretrained(tmp_path).to_diff_dict()["id2label"] == theirs.to_diff_dict()["id2label"]
    ours.to_json_file(tmp_path / "full.json", use_diff=False)
    assert json.loads((tmp_path / "full.json").read_text()) == ours.to_dict()


def test_from_pretrained_subfolder(tmp_path):
    transformers.DeiTConfig(hidden_size=48, num_attention_heads=4).save_pretrained(tmp_path / "repo" / "student")
    theirs = transformers.DeiTConfig.from_pretrained(tmp_path / "repo", subfolder="student")
    ours = deit.DeiTConfig.from_pretrained(tmp_path / "repo", subfolder="student")
    assert (ours.hidden_size, ours.num_attention_heads) == (theirs.hidden_size, theirs.num_attention_heads) == (48, 4)


def test_is_encoder_decoder_and_dtype_as_the_reference_records_it(tmp_path, saved):
    assert deit.DeiTConfig().is_encoder_decoder is transformers.DeiTConfig().is_encoder_decoder is False
    # transformers writes "dtype" when it saves a model; both sides read it as a torch.dtype.
    written = json.loads((saved["DeiTModel"] / CONFIG_NAME).read_text())
    assert written["dtype"] == "float32"
    assert deit.DeiTConfig.from_pretrained(saved["DeiTModel"]).dtype == transformers.DeiTConfig.from_pretrained(saved["DeiTModel"]).dtype == torch.float32
    # Older files say torch_dtype.
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"model_type": "deit", "torch_dtype": "bfloat16"}))
    ours, theirs = deit.DeiTConfig.from_pretrained(tmp_path), transformers.DeiTConfig.from_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours.dtype == ours.torch_dtype == theirs.dtype == torch.bfloat16
    # Our save records the weights' dtype the same way.
    model = deit.DeiTModel(deit.DeiTConfig(**TINY)).to(torch.float16)
    model.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())["dtype"] == "float16"
    assert transformers.DeiTConfig.from_pretrained(tmp_path / "ours").dtype == torch.float16
    assert deit.DeiTModel.from_pretrained(tmp_path / "ours", dtype="auto").dtype == torch.float16
