"""The image processor's step-by-step API, channel counts and ``to_dict`` against transformers'
PIL/numpy backend and its ``image_transforms`` functions; the evaluation resize of a crop ratio
against timm's; choosing the processor of a model folder.

uint8 inputs: resize and crop are compared bit for bit (both resize with Pillow); rescale and
normalize compute in the same dtypes, so they are compared exactly too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deit.processing import (
    DEFAULT_CROP_PCT,
    PREPROCESSOR_CONFIG_NAME,
    DeiTImageProcessor,
    eval_resize_size,
)

image_transforms = pytest.importorskip("transformers.image_transforms")
HFPil = pytest.importorskip("transformers.models.deit").DeiTImageProcessorPil


@pytest.fixture
def photo() -> np.ndarray:
    """A smooth 8-bit RGB image with detail (a gradient plus noise), 61 x 83."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 83)[None, :, None] + np.linspace(0, 50, 61)[:, None, None]
    return np.clip(ramp + rng.integers(0, 6, (61, 83, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_resize_center_crop_rescale_normalize_one_by_one(photo, layout):
    image = photo if layout == "channels_last" else np.ascontiguousarray(photo.transpose(2, 0, 1))
    proc = DeiTImageProcessor()
    resized = proc.resize(image, size={"height": 40, "width": 50}, resample=Image.Resampling.BICUBIC)
    reference = image_transforms.resize(image, (40, 50), resample=Image.Resampling.BICUBIC)
    assert resized.dtype == reference.dtype == np.uint8
    np.testing.assert_array_equal(resized, reference)
    # Cropping past the edge pads with zeros at the reference's offsets.
    for crop in ((30, 20), (45, 64)):
        np.testing.assert_array_equal(proc.center_crop(resized, size=crop), image_transforms.center_crop(resized, crop))
    rescaled = proc.rescale(resized, scale=1 / 255)
    np.testing.assert_array_equal(rescaled, image_transforms.rescale(resized, 1 / 255))
    assert rescaled.dtype == np.float32
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    np.testing.assert_array_equal(proc.normalize(rescaled, mean=mean, std=std), image_transforms.normalize(rescaled, mean, std))
    # The processor's own settings are the defaults of each step, and the steps make up preprocess.
    steps = proc.normalize(proc.rescale(proc.center_crop(proc.resize(image))), data_format="channels_first")
    np.testing.assert_array_equal(steps, proc(image, return_tensors="np").pixel_values[0])


def test_resize_keeps_pil_images_and_shortest_edge(photo):
    proc = DeiTImageProcessor(size={"shortest_edge": 40})
    out = proc.resize(Image.fromarray(photo))
    assert isinstance(out, Image.Image) and (out.height, out.width) == proc.resized_size(61, 83) == (40, 54)
    reference = image_transforms.resize(photo, image_transforms.get_resize_output_image_size(photo, 40, default_to_square=False),
                                        resample=Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), reference)


@pytest.mark.parametrize("channels", [4, 1])
def test_channel_count_follows_mean_and_std(photo, channels):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (61, 83, channels), dtype=np.uint8)
    stats = dict(image_mean=[0.5, 0.4, 0.3, 0.2][:channels], image_std=[0.25, 0.2, 0.3, 0.35][:channels])
    ours = DeiTImageProcessor(**stats)
    reference = HFPil(**stats, size={"height": 48, "width": 48}, crop_size={"height": 40, "width": 40})
    inputs = [image, np.ascontiguousarray(image.transpose(2, 0, 1)), Image.fromarray(image[..., 0] if channels == 1 else image)]
    for x in inputs:
        a = ours(x, return_tensors="np", size={"height": 48, "width": 48}, crop_size=40).pixel_values
        b = reference(x, return_tensors="np").pixel_values
        assert a.shape == b.shape == (1, channels, 40, 40)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=f"image has 3 channel\\(s\\) but image_mean/image_std have {channels} value"):
        ours(photo)


@pytest.mark.parametrize("mean,std", [(0.5, 0.25), ([0.4, 0.5, 0.6], [0.2, 0.3, 0.25]), ((0.4, 0.5, 0.6), (0.2, 0.3, 0.25))])
def test_to_dict_keeps_mean_and_std_as_the_reference(tmp_path, mean, std):
    ours, theirs = DeiTImageProcessor(image_mean=mean, image_std=std), HFPil(image_mean=mean, image_std=std)
    for key in ("image_mean", "image_std"):
        assert ours.to_dict()[key] == theirs.to_dict()[key] and type(ours.to_dict()[key]) is type(theirs.to_dict()[key])
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    a = json.loads((tmp_path / "ours" / PREPROCESSOR_CONFIG_NAME).read_text())
    b = json.loads((tmp_path / "theirs" / PREPROCESSOR_CONFIG_NAME).read_text())
    assert {k: a[k] for k in ("image_mean", "image_std")} == {k: b[k] for k in ("image_mean", "image_std")}
    assert DeiTImageProcessor.from_pretrained(tmp_path / "ours") == ours


@pytest.mark.parametrize("crop_size", [28, 32, 224, 384])
@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 0.95, 1.0])
def test_eval_resize_size_is_the_authors_and_timms(crop_size, crop_pct):
    timm_transforms = pytest.importorskip("timm.data.transforms_factory")
    resize = timm_transforms.transforms_imagenet_eval(img_size=crop_size, crop_pct=crop_pct).transforms[0]
    assert eval_resize_size(crop_size, crop_pct) == resize.size == int(crop_size / crop_pct)


def test_for_model_reads_the_folder_or_follows_the_recipe(tmp_path):
    recipe = DeiTImageProcessor.for_model(tmp_path / "model.safetensors", 384)
    # Issue 28: the one evaluation resize rule (deit.images), the authors' shorter side, not a square.
    assert recipe.size == {"shortest_edge": eval_resize_size(384, DEFAULT_CROP_PCT)} == {"shortest_edge": 438}
    assert recipe.crop_size == {"height": 384, "width": 384}
    DeiTImageProcessor(size=40, crop_size=32, image_mean=0.5, image_std=0.5).save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "model.safetensors"):
        found = DeiTImageProcessor.for_model(source, 384)
        assert found.size == {"height": 40, "width": 40} and found.image_mean == (0.5, 0.5, 0.5)
