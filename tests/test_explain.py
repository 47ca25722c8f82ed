"""Attention maps and rollout against a computation written out here with explicit loops, for
DeiT and ViT, at the model's size and an interpolated one; the picture; the ``deit attention`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.cbook
import pytest
import torch
from PIL import Image

import deit
from deit.explain import attention_rollout, explain, query_index, render, token_attention, token_similarity

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, num_labels=3)


def model_of(cls):
    torch.manual_seed(0)
    model = cls(deit.DeiTConfig(**SMALL) if cls.config_class is deit.DeiTConfig else deit.ViTConfig(**SMALL))
    with torch.no_grad():  # non-zero biases and sharper attention than the initialisation gives
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def rollout_by_hand(attentions, query, num_prefix, grid, head=None):
    """Abnar & Zuidema's rollout, one image, one matrix entry at a time."""
    batch, tokens = attentions[0].shape[0], attentions[0].shape[-1]
    maps = []
    for b in range(batch):
        product = [[float(i == j) for j in range(tokens)] for i in range(tokens)]
        for attention in attentions:
            heads = range(attention.shape[1]) if head is None else [head]
            mixed = [[sum(float(attention[b, h, i, j]) for h in heads) / len(heads) + float(i == j) for j in range(tokens)] for i in range(tokens)]
            mixed = [[v / sum(row) for v in row] for row in mixed]
            product = [[sum(mixed[i][k] * product[k][j] for k in range(tokens)) for j in range(tokens)] for i in range(tokens)]
        row = product[query][num_prefix:]
        total = sum(row)
        maps.append(torch.tensor([v / total for v in row]).reshape(grid))
    return torch.stack(maps)


CASES = [(deit.DeiTForImageClassificationWithTeacher, 32), (deit.DeiTForImageClassificationWithTeacher, 48),
         (deit.ViTForImageClassification, 32), (deit.ViTForImageClassification, 40)]


@pytest.mark.parametrize("cls,size", CASES, ids=["deit-native", "deit-48px", "vit-native", "vit-40px"])
def test_rollout_and_last_layer_maps_equal_a_computation_by_hand(cls, size):
    model = model_of(cls)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    grid = (size // 8, size // 8)
    interpolate = size != 32
    with torch.no_grad():
        out = model(pixels, output_attentions=True, interpolate_pos_encoding=interpolate)
    tokens = ("cls", "dist") if model.num_prefix_tokens == 2 else ("cls",)
    result = explain(model, pixels, method="rollout", interpolate_pos_encoding=interpolate)
    assert set(result.maps) == set(tokens)
    for token in tokens:
        query = query_index(model, token)
        expected = rollout_by_hand(out.attentions, query, model.num_prefix_tokens, grid)
        got = result.maps[token]
        assert got.shape == (2, *grid)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(dim=(1, 2)), torch.ones(2), atol=1e-5, rtol=0)
        one_head = attention_rollout(out.attentions, query, model.num_prefix_tokens, grid, head=2)
        torch.testing.assert_close(one_head, rollout_by_hand(out.attentions, query, model.num_prefix_tokens, grid, head=2), atol=1e-5, rtol=1e-4)

        last = explain(model, pixels, method="last-layer", tokens=(token,), interpolate_pos_encoding=interpolate).maps[token]
        by_hand = torch.stack([
            torch.tensor([sum(float(out.attentions[-1][b, h, query, model.num_prefix_tokens + p]) for h in range(4)) / 4
                          for p in range(grid[0] * grid[1])]).reshape(grid)
            for b in range(2)
        ])
        torch.testing.assert_close(last, by_hand, atol=1e-6, rtol=1e-5)
    # A patch as the query token: patch 5's own row of the first layer.
    first = token_attention(out.attentions, query_index(model, 5), model.num_prefix_tokens, grid, layer=0, head=1)
    torch.testing.assert_close(first.flatten(1), out.attentions[0][:, 1, model.num_prefix_tokens + 5, model.num_prefix_tokens:])


def test_the_maps_differ_between_tokens_and_follow_the_predictions():
    model = model_of(deit.DeiTForImageClassificationWithTeacher)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = explain(model, pixels)
    assert not torch.allclose(result.maps["cls"], result.maps["dist"])
    out = model(pixels)
    assert torch.equal(result.predictions["cls"], out.cls_logits.argmax(-1))
    assert torch.equal(result.predictions["dist"], out.distillation_logits.argmax(-1))
    assert torch.equal(result.predictions["average"], out.logits.argmax(-1))


def test_token_similarity_per_layer():
    model = model_of(deit.DeiTForImageClassificationWithTeacher)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    similarity = token_similarity(model, pixels)
    out = model.deit(pixels, output_hidden_states=True)
    states = list(out.hidden_states) + [out.last_hidden_state]
    assert similarity.shape == (SMALL["num_hidden_layers"] + 2,)
    for value, state in zip(similarity, states):
        cosines = [float(state[b, 0] @ state[b, 1] / (state[b, 0].norm() * state[b, 1].norm())) for b in range(3)]
        assert float(value) == pytest.approx(sum(cosines) / 3, abs=1e-5)
    # At the input the two tokens are the learned embeddings plus their position embeddings.
    embeddings = model.deit.embeddings
    cls = embeddings.cls_token[0, 0] + embeddings.position_embeddings[0, 0]
    dist = embeddings.distillation_token[0, 0] + embeddings.position_embeddings[0, 1]
    assert float(similarity[0]) == pytest.approx(float(torch.cosine_similarity(cls, dist, dim=0)), abs=1e-5)


def test_asking_a_vit_for_the_distillation_token_is_an_error():
    model = model_of(deit.ViTForImageClassification)
    with pytest.raises(ValueError, match=r"no \[DIST\] token"):
        query_index(model, "dist")
    with pytest.raises(ValueError, match="no \\[DIST\\] token"):
        token_similarity(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="head must be in 0..3"):
        explain(model, torch.zeros(1, 3, 32, 32), head=4)


def test_render_writes_a_png_of_the_expected_size(tmp_path):
    model = model_of(deit.DeiTForImageClassificationWithTeacher)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    result = explain(model, pixels)
    path = tmp_path / "maps.png"
    render(pixels[0], result, 0, {0: "cat", 1: "dog", 2: "eel"}, path, title="test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1020, 360)  # 3 panels of 3.4 x 3.6 inches at 100 dpi
        image.load()
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, nothing left behind


def test_deit_attention_command_on_a_photograph_and_a_corrupt_file(tmp_path):
    model = model_of(deit.DeiTForImageClassificationWithTeacher)
    model.config.id2label = {0: "cat", 1: "dog", 2: "eel"}
    model.save_pretrained(tmp_path / "model")
    photo = tmp_path / "photos" / "hopper.jpg"
    photo.parent.mkdir()
    Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).save(photo)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG not really")
    script = Path(sys.executable).with_name("deit")
    result = subprocess.run([str(script), "attention", str(tmp_path / "photos"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "maps")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "broken.png" in result.stderr and "1 of 2 file(s)" in result.stderr
    assert "hopper.jpg.attention.png" in result.stdout and "cls: " in result.stdout and "dist: " in result.stdout
    with Image.open(tmp_path / "maps" / "hopper.jpg.attention.png") as image:
        assert image.format == "PNG" and image.size == (1020, 360)
    assert not (tmp_path / "maps" / "broken.png.attention.png").exists()
