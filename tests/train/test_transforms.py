"""Transforms of the recipe (shapes, dtypes, normalisation, erasing, RandAugment spec) and
batch mixup / cutmix checked against the mixing formulas."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deit.train.transforms import (
    MixupCutmix,
    RandAugment,
    build_eval_transform,
    build_train_transform,
    parse_rand_augment,
    smoothed_one_hot,
)
from deit.processing import eval_resize_size

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def noise_image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


def test_train_transform_shape_dtype_and_seeded_repeatability():
    transform = build_train_transform(24, mean=MEAN, std=STD)
    torch.manual_seed(3)
    first = transform(noise_image())
    torch.manual_seed(3)
    second = transform(noise_image())
    assert first.shape == (3, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, second)


def test_train_transform_normalises_then_erases():
    # No crop/flip/colour changes: a uniform image stays uniform, except the erased box of zeros.
    transform = build_train_transform(
        16, mean=MEAN, std=STD, scale=(1.0, 1.0), hflip=0.0, rand_augment=None, color_jitter=None, re_prob=1.0, re_mode="const",
    )
    out = transform(Image.new("RGB", (16, 16), (51, 102, 204)))
    expected = (torch.tensor([51, 102, 204]) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    erased = (out == 0).all(dim=0)
    assert 0 < int(erased.sum()) < 16 * 16
    kept = out[:, ~erased]
    torch.testing.assert_close(kept, expected.view(3, 1).expand_as(kept), atol=1e-6, rtol=0)


def test_eval_transform_is_resize_to_size_over_crop_pct_then_center_crop():
    assert eval_resize_size(224, 0.875) == 256
    assert eval_resize_size(28, 0.875) == 32
    assert eval_resize_size(32, 0.9) == 35
    with pytest.raises(ValueError):
        eval_resize_size(32, 0.0)
    # A 64x32 image whose left half is black and right half white: the shorter side goes to
    # 32 / 0.5 = 64 (so 128x64), the centre 32x32 crop straddles the edge at column 16.
    image = Image.new("L", (64, 32), 0)
    image.paste(255, (32, 0, 64, 32))
    out = build_eval_transform(32, mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=0.5, interpolation="bilinear")(image.convert("RGB"))
    assert out.shape == (3, 32, 32)
    assert float(out[:, :, :14].max()) == 0.0 and float(out[:, :, 18:].min()) == 1.0


def test_rand_augment_spec():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {"magnitude": 9.0, "magnitude_std": 0.5, "num_ops": 2}
    assert parse_rand_augment("rand-m7-n3") == {"magnitude": 7.0, "magnitude_std": 0.0, "num_ops": 3}
    for bad in ("auto-m9", "rand-m11", "rand-x3", "rand-m9-inc0", "rand-mfoo"):
        with pytest.raises(ValueError):
            parse_rand_augment(bad)


def test_rand_augment_magnitude_scale_and_noise():
    fixed = RandAugment(magnitude=9.0)
    assert fixed.magnitude == 90 and fixed.num_magnitude_bins == 101  # 90 % of each op's range, as timm's m9
    noisy = RandAugment(magnitude=9.0, magnitude_std=0.5)
    drawn = set()
    torch.manual_seed(0)
    for _ in range(30):
        noisy(Image.new("RGB", (8, 8)))
        drawn.add(noisy.magnitude)
    assert len(drawn) > 3 and all(0 <= m <= 100 for m in drawn)


def labelled_batch(batch: int = 6, classes: int = 5, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=g), torch.arange(batch) % classes


def test_disabled_mixup_gives_label_smoothed_targets():
    images, labels = labelled_batch()
    mix = MixupCutmix(5, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
    assert not mix.enabled
    out, targets = mix(images, labels)
    assert out is images
    expected = torch.full((6, 5), 0.02)
    expected[torch.arange(6), labels] = 0.92  # 1 - 0.1 + 0.1 / 5
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(smoothed_one_hot(labels, 5, 0.0), torch.nn.functional.one_hot(labels, 5).float())


def test_mixup_blends_with_the_reversed_batch():
    images, labels = labelled_batch()
    torch.manual_seed(0)
    out, targets = MixupCutmix(5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)(images, labels)
    # Recover lam from sample 0 = lam * x0 + (1 - lam) * x5, then check every sample and target.
    a, b = images[0].flatten(), images[-1].flatten()
    lam = float(((out[0].flatten() - b) @ (a - b)) / ((a - b) @ (a - b)))
    assert 0 < lam < 1
    torch.testing.assert_close(out, lam * images + (1 - lam) * images.flip(0), atol=1e-5, rtol=0)
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    images, labels = labelled_batch(size=16)
    torch.manual_seed(1)
    for _ in range(5):
        out, targets = MixupCutmix(5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)(images, labels)
        pasted = (out[0] != images[0]).any(dim=0)
        assert torch.equal(out[0][:, pasted], images[-1][:, pasted])  # the box holds the reversed batch
        assert torch.equal(out[0][:, ~pasted], images[0][:, ~pasted])
        lam = 1 - float(pasted.sum()) / (16 * 16)
        smooth = smoothed_one_hot(labels, 5, 0.1)
        torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_mixup_cutmix_switch_draws_both_and_rejects_soft_labels():
    images, labels = labelled_batch()
    mix = MixupCutmix(5)  # the recipe: mixup 0.8, cutmix 1.0, switch 0.5
    torch.manual_seed(0)
    kinds = set()
    for _ in range(20):
        out, targets = mix(images, labels)
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        # Cutmix leaves pixels outside the box untouched; mixup changes them all.
        kinds.add("mixup" if bool((out[0] != images[0]).all()) else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    with pytest.raises(ValueError, match="class indices"):
        mix(images, torch.zeros(6, 5))
