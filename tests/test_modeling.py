"""Parity of our model classes with transformers' DeiT on small random checkpoints.

Each test builds a model on one side, saves it with save_pretrained, loads it on the other side
through the files (so the checkpoint format is exercised too) and compares outputs.
Tolerance: max abs difference <= 1e-4 in float32 (ATOL below).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import deit

transformers = pytest.importorskip("transformers")

ATOL = 1e-4

CLASS_PAIRS = {
    "DeiTModel": (deit.DeiTModel, transformers.DeiTModel),
    "DeiTForImageClassification": (deit.DeiTForImageClassification, transformers.DeiTForImageClassification),
    "DeiTForImageClassificationWithTeacher": (deit.DeiTForImageClassificationWithTeacher, transformers.DeiTForImageClassificationWithTeacher),
    "DeiTForMaskedImageModeling": (deit.DeiTForMaskedImageModeling, transformers.DeiTForMaskedImageModeling),
}


def hf_config(**kw):
    return transformers.DeiTConfig(**kw)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (the reference initialises tokens and biases to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def build_pair(name, tmp_path, direction, attn="eager", **config_kw):
    ours_cls, theirs_cls = CLASS_PAIRS[name]
    folder = tmp_path / f"{name}-{direction}"
    if direction == "theirs_to_ours":
        theirs = randomize(theirs_cls(hf_config(**config_kw)))
        theirs.save_pretrained(folder)
        ours = ours_cls.from_pretrained(folder, attn_implementation=attn)
        theirs = theirs_cls.from_pretrained(folder, attn_implementation=attn).eval()
    else:
        ours = randomize(ours_cls(deit.DeiTConfig(**config_kw)))
        ours.save_pretrained(folder)
        theirs = theirs_cls.from_pretrained(folder, attn_implementation=attn).eval()
        ours = ours_cls.from_pretrained(folder, attn_implementation=attn)
    return ours, theirs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


DIRECTIONS = ["theirs_to_ours", "ours_to_theirs"]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", list(CLASS_PAIRS))
def test_outputs_hidden_states_and_attentions_match(name, direction, tmp_path, tiny_kwargs, pixels):
    ours, theirs = build_pair(name, tmp_path, direction, **tiny_kwargs)
    kwargs = dict(output_hidden_states=True, output_attentions=True)
    if name == "DeiTForMaskedImageModeling":
        g = torch.Generator().manual_seed(1)
        kwargs["bool_masked_pos"] = torch.rand(2, 16, generator=g) > 0.5
    with torch.no_grad():
        a = ours(pixels, **kwargs)
        b = theirs(pixels, **kwargs)

    fields = {
        "DeiTModel": ["last_hidden_state", "pooler_output"],
        "DeiTForImageClassification": ["logits"],
        "DeiTForImageClassificationWithTeacher": ["logits", "cls_logits", "distillation_logits"],
        "DeiTForMaskedImageModeling": ["reconstruction", "loss"],
    }[name]
    for field in fields:
        assert max_diff(getattr(a, field), getattr(b, field)) <= ATOL, field

    # Hidden states: the embedding output plus each layer's output, before the final layernorm.
    assert len(a.hidden_states) == tiny_kwargs["num_hidden_layers"] + 1 == len(b.hidden_states)
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert max_diff(x, y) <= ATOL, f"hidden_states[{i}]"
    assert len(a.attentions) == tiny_kwargs["num_hidden_layers"] == len(b.attentions)
    for i, (x, y) in enumerate(zip(a.attentions, b.attentions)):
        assert max_diff(x, y) <= ATOL, f"attentions[{i}]"
        assert torch.allclose(x.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_sdpa_default_matches_reference(direction, tmp_path, tiny_kwargs, pixels):
    ours, theirs = build_pair("DeiTForImageClassificationWithTeacher", tmp_path, direction, attn="sdpa", **tiny_kwargs)
    assert ours.config.attn_implementation == "sdpa"
    with torch.no_grad():
        assert max_diff(ours(pixels).logits, theirs(pixels).logits) <= ATOL


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", ["DeiTModel", "DeiTForImageClassificationWithTeacher", "DeiTForImageClassification"])
def test_interpolate_pos_encoding_at_other_size(name, direction, tmp_path, tiny_kwargs):
    ours, theirs = build_pair(name, tmp_path, direction, **tiny_kwargs)
    g = torch.Generator().manual_seed(3)
    for size in [(48, 48), (40, 56)]:
        x = torch.randn(2, 3, *size, generator=g)
        with torch.no_grad():
            a = ours(x, interpolate_pos_encoding=True, output_hidden_states=True)
            b = theirs(x, interpolate_pos_encoding=True, output_hidden_states=True)
        assert max_diff(a[0], b[0]) <= ATOL
        for x_h, y_h in zip(a.hidden_states, b.hidden_states):
            assert max_diff(x_h, y_h) <= ATOL


@pytest.mark.parametrize("problem_type,labels", [
    (None, torch.tensor([1, 4])),
    ("single_label_classification", torch.tensor([0, 3])),
    ("multi_label_classification", torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])),
    ("regression", torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0], [1.0, 1.0, 1.0, -2.0, 0.0]])),
    (None, torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 1, 0, 0]])),  # inferred: float labels -> multi-label
])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_classification_losses_match(problem_type, labels, direction, tmp_path, tiny_kwargs, pixels):
    ours, theirs = build_pair("DeiTForImageClassification", tmp_path, direction, problem_type=problem_type, **tiny_kwargs)
    with torch.no_grad():
        a = ours(pixels, labels=labels)
        b = theirs(pixels, labels=labels)
    assert max_diff(a.loss, b.loss) <= ATOL
    assert max_diff(a.logits, b.logits) <= ATOL


def test_regression_with_one_label_matches(tmp_path, tiny_kwargs, pixels):
    tiny_kwargs["num_labels"] = 1
    ours, theirs = build_pair("DeiTForImageClassification", tmp_path, "theirs_to_ours", **tiny_kwargs)
    labels = torch.tensor([0.3, -1.2])
    with torch.no_grad():
        assert max_diff(ours(pixels, labels=labels).loss, theirs(pixels, labels=labels).loss) <= ATOL


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_masked_image_modeling_reconstruction_and_loss(direction, tmp_path, tiny_kwargs, pixels):
    ours, theirs = build_pair("DeiTForMaskedImageModeling", tmp_path, direction, **tiny_kwargs)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, 7:13] = True
    with torch.no_grad():
        a = ours(pixels, bool_masked_pos=mask)
        b = theirs(pixels, bool_masked_pos=mask)
    assert a.reconstruction.shape == (2, 3, 32, 32)
    assert max_diff(a.reconstruction, b.reconstruction) <= ATOL
    assert max_diff(a.loss, b.loss) <= ATOL
    # The feature map is made of the patch tokens (transformers 5.x), not [:, 1:-1] (4.x bug).
    assert torch.equal(a.logits, a.reconstruction)


def test_masked_image_modeling_at_interpolated_size(tiny_kwargs):
    """Unlike the reference, a mask at a non-default input size works, with the loss computed by hand."""
    model = randomize(deit.DeiTForMaskedImageModeling(deit.DeiTConfig(**tiny_kwargs)))
    x = torch.randn(1, 3, 40, 48)  # grid 5 x 6 with patch 8
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[0, [0, 7, 29]] = True
    with torch.no_grad():
        out = model(x, bool_masked_pos=mask, interpolate_pos_encoding=True)
    assert out.reconstruction.shape == (1, 3, 40, 48)
    pixel_mask = mask.reshape(1, 5, 6).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1).float()
    expected = ((x - out.reconstruction).abs() * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3
    assert abs(out.loss.item() - expected.item()) <= 1e-6


# ---------------------------------------------------------------------------- head mask
def reference_forward_with_head_mask(state: dict, config: deit.DeiTConfig, pixels: torch.Tensor, head_mask: torch.Tensor):
    """An independent eager DeiT forward written from the weights, with transformers-4.x head-mask
    semantics: probabilities (after softmax) are multiplied by mask[layer, head] (1 keeps a head)."""
    p = lambda name: state[f"deit.{name}"]  # noqa: E731
    heads, dim = config.num_attention_heads, config.hidden_size
    x = F.conv2d(pixels, p("embeddings.patch_embeddings.projection.weight"), p("embeddings.patch_embeddings.projection.bias"), stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([p("embeddings.cls_token").expand(b, -1, -1), p("embeddings.distillation_token").expand(b, -1, -1), x], 1)
    x = x + p("embeddings.position_embeddings")
    hidden, attentions = [x], []
    for i in range(config.num_hidden_layers):
        L = lambda name: p(f"encoder.layer.{i}.{name}")  # noqa: E731
        h = F.layer_norm(x, (dim,), L("layernorm_before.weight"), L("layernorm_before.bias"), config.layer_norm_eps)
        q, k, v = (F.linear(h, L(f"attention.attention.{n}.weight"), L(f"attention.attention.{n}.bias")) for n in ("query", "key", "value"))
        q, k, v = (t.reshape(b, -1, heads, dim // heads).permute(0, 2, 1, 3) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), -1)
        probs = probs * head_mask[i].view(1, heads, 1, 1)
        attentions.append(probs)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(b, -1, dim)
        x = x + F.linear(ctx, L("attention.output.dense.weight"), L("attention.output.dense.bias"))
        h = F.layer_norm(x, (dim,), L("layernorm_after.weight"), L("layernorm_after.bias"), config.layer_norm_eps)
        x = x + F.linear(F.gelu(F.linear(h, L("intermediate.dense.weight"), L("intermediate.dense.bias"))), L("output.dense.weight"), L("output.dense.bias"))
        hidden.append(x)
    x = F.layer_norm(x, (dim,), p("layernorm.weight"), p("layernorm.bias"), config.layer_norm_eps)
    cls = F.linear(x[:, 0], state["cls_classifier.weight"], state["cls_classifier.bias"])
    dist = F.linear(x[:, 1], state["distillation_classifier.weight"], state["distillation_classifier.bias"])
    return (cls + dist) / 2, hidden, attentions


@pytest.mark.parametrize("mask_shape", ["per_head", "per_layer_and_head"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_head_mask_follows_transformers_4_semantics(mask_shape, attn, tiny_kwargs, pixels):
    config = deit.DeiTConfig(**tiny_kwargs, attn_implementation=attn)
    model = randomize(deit.DeiTForImageClassificationWithTeacher(config))
    if mask_shape == "per_head":
        head_mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
        full = head_mask.expand(2, 4)
    else:
        full = head_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    expected_logits, expected_hidden, expected_attn = reference_forward_with_head_mask(model.state_dict(), config, pixels, full)
    with torch.no_grad(), pytest.warns(UserWarning) if attn == "sdpa" else _no_warning():
        out = model(pixels, head_mask=head_mask, output_hidden_states=True, output_attentions=True)
    assert max_diff(out.logits, expected_logits) <= ATOL
    for x, y in zip(out.hidden_states, expected_hidden):
        assert max_diff(x, y) <= ATOL
    for x, y in zip(out.attentions, expected_attn):
        assert max_diff(x, y) <= ATOL
    # A masked head contributes nothing: its attention map is all zeros.
    assert out.attentions[0][:, full[0] == 0].abs().max() == 0
    # And the mask really changes the result (the test could not pass with a no-op mask).
    with torch.no_grad():
        unmasked = model(pixels).logits
    assert max_diff(unmasked, out.logits) > 1e-3


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_sdpa_and_eager_agree_and_sdpa_warns_once(tiny_kwargs, pixels):
    model = randomize(deit.DeiTModel(deit.DeiTConfig(**tiny_kwargs)))
    with torch.no_grad():
        sdpa_out = model(pixels).last_hidden_state
        with pytest.warns(UserWarning, match="eager"):
            with_attn = model(pixels, output_attentions=True)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(pixels, output_attentions=True)  # second time: no warning
    assert max_diff(sdpa_out, with_attn.last_hidden_state) <= ATOL
    assert len(with_attn.attentions) == 2


# -------------------------------------------------------------------------- API shape
def test_outputs_by_attribute_key_and_index(tiny_kwargs, pixels):
    model = randomize(deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**tiny_kwargs)))
    with torch.no_grad():
        out = model(pixels)
        as_tuple = model(pixels, return_dict=False)
    assert out.keys() == ["logits", "cls_logits", "distillation_logits"]
    assert out["cls_logits"] is out.cls_logits and out[0] is out.logits
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    assert torch.equal(as_tuple[1], out.cls_logits)
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    with pytest.raises(KeyError):
        out["loss"]


def test_teacher_model_trains_both_heads(tiny_kwargs, pixels):
    model = randomize(deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(**tiny_kwargs))).train()
    labels = torch.tensor([1, 2])
    out = model(pixels, labels=labels)
    expected = (F.cross_entropy(out.cls_logits, labels) + F.cross_entropy(out.distillation_logits, labels)) / 2
    torch.testing.assert_close(out.loss, expected)
    teacher = torch.tensor([[0.0, 0, 5, 0, 0], [0, 0, 0, 5, 0]])
    out = model(pixels, labels=labels, teacher_logits=teacher)
    expected = 0.5 * F.cross_entropy(out.cls_logits, labels) + 0.5 * F.cross_entropy(out.distillation_logits, torch.tensor([2, 3]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.distillation_classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_pretrained_dtype(dtype, tmp_path, tiny_kwargs, pixels):
    model = randomize(deit.DeiTForImageClassification(deit.DeiTConfig(**tiny_kwargs)))
    model.save_pretrained(tmp_path)
    low = deit.DeiTForImageClassification.from_pretrained(tmp_path, torch_dtype=dtype, device="cpu")
    assert low.dtype == dtype
    with torch.no_grad():
        out = low(pixels).logits
    assert out.dtype == dtype
    assert max_diff(out.float(), model(pixels).logits) < 0.1


def test_drop_path_is_only_active_in_training(tiny_kwargs, pixels):
    model = randomize(deit.DeiTModel(deit.DeiTConfig(**tiny_kwargs, drop_path_rate=0.5)))
    with torch.no_grad():
        assert torch.equal(model(pixels)[0], model(pixels)[0])
        model.train()
        torch.manual_seed(0)
        a = model(pixels)[0]
        torch.manual_seed(1)
        b = model(pixels)[0]
    assert not torch.equal(a, b)


def test_init_is_truncated_normal(tiny_kwargs):
    config = deit.DeiTConfig(**{**tiny_kwargs, "hidden_size": 64, "intermediate_size": 256})
    model = deit.DeiTForImageClassificationWithTeacher(config)
    w = model.deit.encoder.layer[0].intermediate.dense.weight
    assert abs(w.std().item() - 0.02) < 0.004 and w.abs().max() <= 0.04 + 1e-6
    assert model.deit.encoder.layer[0].intermediate.dense.bias.abs().max() == 0
    assert model.deit.embeddings.distillation_token.abs().max() > 0  # drawn, not zero
    assert torch.equal(model.deit.layernorm.weight, torch.ones(64))


# ------------------------------------------------------------------------- bad inputs
@pytest.fixture
def tiny_model(tiny_kwargs):
    return deit.DeiTForMaskedImageModeling(deit.DeiTConfig(**tiny_kwargs)).eval()


def test_wrong_channel_count(tiny_model):
    with pytest.raises(ValueError, match="1 channels.*num_channels=3"):
        tiny_model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("size", [(40, 40), (32, 40), (35, 35)])
def test_wrong_image_size_without_interpolation(tiny_model, size):
    # (35, 35) has the same patch count as (32, 32): it must still be refused.
    with pytest.raises(ValueError, match=r"Input image size .* doesn't match.*interpolate_pos_encoding=True"):
        tiny_model(torch.randn(1, 3, *size))


def test_mask_of_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match=r"bool_masked_pos must have shape \(batch, num_patches\) = \(1, 16\)"):
        tiny_model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 15, dtype=torch.bool))


def test_mask_without_mask_token(tiny_kwargs):
    model = deit.DeiTModel(deit.DeiTConfig(**tiny_kwargs))
    with pytest.raises(ValueError, match="no mask token"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 16, dtype=torch.bool))


def test_head_mask_of_wrong_shape(tiny_kwargs):
    model = deit.DeiTModel(deit.DeiTConfig(**tiny_kwargs, attn_implementation="eager"))
    with pytest.raises(ValueError, match=r"head_mask must have shape \(4,\) or \(2, 4\)"):
        model(torch.randn(1, 3, 32, 32), head_mask=torch.ones(3))


def test_pixel_values_must_be_4d(tiny_model):
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        tiny_model(torch.randn(3, 32, 32))
