"""DeiTImageProcessor: parity with transformers' processors on real photographs, input
formats, config files, errors.

Photos come from installed packages (matplotlib's grace_hopper.jpg always; scikit-learn's
china.jpg / flower.jpg when it is installed), so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never try the network here

import numpy as np
import pytest
import torch
from PIL import Image

from deit.processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BatchFeature,
    DeiTFeatureExtractor,
    DeiTImageProcessor,
)

deit_hf = pytest.importorskip("transformers.models.deit")
HFPil = deit_hf.DeiTImageProcessorPil  # transformers 5.x: the PIL/numpy backend
HFFast = getattr(deit_hf, "DeiTImageProcessor", None)  # the torchvision backend

# One 8-bit level after normalization, for the channel with the smallest std (the largest
# step): |diff| <= 1/255/min(std) means "at most one level apart". The eps absorbs float32
# rounding of two values that are exactly one level apart.
ONE_LEVEL = 1 / 255 / min(IMAGENET_DEFAULT_STD)
TOL = ONE_LEVEL + 1e-5
# The torchvision backend resizes with torch's antialiased bicubic, not Pillow's: measured on
# these photos it is at most two levels off, on under 1% of the values.
FAST_TOL = 2 * ONE_LEVEL + 1e-5


def _photo_paths() -> list[str]:
    import matplotlib.cbook

    paths = [str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
    try:
        import sklearn

        folder = Path(sklearn.__file__).parent / "datasets" / "images"
        paths += [str(folder / name) for name in ("china.jpg", "flower.jpg") if (folder / name).is_file()]
    except ImportError:
        pass
    return paths


PHOTO_PATHS = _photo_paths()


def _load(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {Path(p).name: _load(p) for p in PHOTO_PATHS}


@pytest.fixture(scope="module")
def hopper(photos) -> Image.Image:
    return photos["grace_hopper.jpg"]  # 512 wide x 600 high: not square


@pytest.fixture(scope="module")
def proc() -> DeiTImageProcessor:
    return DeiTImageProcessor()


def _hf_kwargs() -> dict:
    return {"image_mean": list(IMAGENET_DEFAULT_MEAN), "image_std": list(IMAGENET_DEFAULT_STD)}


@pytest.fixture(scope="module")
def hf_pil():
    return HFPil(**_hf_kwargs())


@pytest.fixture(scope="module")
def hf_fast():
    if HFFast is None:
        pytest.skip("this transformers has no torchvision DeiT processor")
    return HFFast(**_hf_kwargs())


def _rgba(img: Image.Image) -> Image.Image:
    # A varying alpha: compositing onto a background would change pixels, dropping it must not.
    out = img.copy()
    alpha = Image.linear_gradient("L").resize(img.size)
    out.putalpha(alpha)
    return out


# name -> (make the input from an RGB photo, call overrides)
VARIANTS = {
    "rgb": (lambda im: im, {}),
    "grayscale_L": (lambda im: im.convert("L"), {}),
    "rgba": (_rgba, {}),
    "palette_P": (lambda im: im.quantize(colors=200), {}),
    "cmyk": (lambda im: im.convert("CMYK"), {}),
    # 150x97 without resize: the 224 crop pads zeros on all sides (odd amounts on both axes).
    "small_padded": (lambda im: im.resize((150, 97), Image.Resampling.BICUBIC), {"do_resize": False}),
    # Resized smaller than the crop: pads 24 rows (even) and 43 columns (odd).
    "resized_below_crop": (lambda im: im, {"size": {"height": 200, "width": 181}}),
    "non_square_sizes": (lambda im: im, {"size": {"height": 300, "width": 240}, "crop_size": {"height": 200, "width": 180}}),
    "shortest_edge": (lambda im: im, {"size": {"shortest_edge": 256}}),
    "bilinear_int_crop": (lambda im: im, {"resample": 2, "size": 250, "crop_size": 223}),
}


def _reference_input(img: Image.Image) -> Image.Image:
    # The transformers PIL backend takes RGB only (mean/std have 3 values) and would composite
    # RGBA onto white; our documented behaviour is PIL's convert("RGB"), so it gets that.
    return img if img.mode == "RGB" else img.convert("RGB")


@pytest.mark.parametrize("photo", [Path(p).name for p in PHOTO_PATHS])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_transformers_pil_backend(photos, proc, hf_pil, photo, variant):
    make, overrides = VARIANTS[variant]
    img = make(photos[photo])
    ours = proc(img, return_tensors="np", **overrides).pixel_values
    ref = hf_pil(_reference_input(img), return_tensors="np", **overrides).pixel_values
    assert ours.shape == ref.shape and ours.dtype == np.float32
    # Tolerance: one 8-bit level (see TOL). In practice the outputs are bit-identical.
    assert np.abs(ours - ref).max() <= TOL


FAST_VARIANTS = ["rgb", "grayscale_L", "cmyk", "non_square_sizes", "shortest_edge"]


@pytest.mark.parametrize("photo", [Path(p).name for p in PHOTO_PATHS])
@pytest.mark.parametrize("variant", FAST_VARIANTS)
def test_parity_with_transformers_torchvision_backend(photos, proc, hf_fast, photo, variant):
    make, overrides = VARIANTS[variant]
    img = make(photos[photo])
    ours = proc(img, return_tensors="pt", **overrides).pixel_values
    ref = hf_fast(_reference_input(img), return_tensors="pt", **overrides).pixel_values
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    # torchvision's antialiased bicubic is not Pillow's: within two 8-bit levels (FAST_TOL),
    # and almost every value is identical.
    diff = (ours - ref).abs()
    assert diff.max().item() <= FAST_TOL
    assert (diff > ONE_LEVEL / 2).float().mean().item() < 0.01


def test_odd_padding_offset_follows_pil_backend(hopper, proc, hf_fast):
    """The two transformers backends disagree when the crop pads an odd amount: the PIL one puts
    the extra zero column before the image (offset ceil(43/2) = 22), the torchvision one after
    (offset 21). We follow the PIL one; shifted by one column the outputs agree."""
    kw = {"size": {"height": 200, "width": 181}}
    ours = proc(hopper, return_tensors="pt", **kw).pixel_values
    fast = hf_fast(hopper, return_tensors="pt", **kw).pixel_values
    pad_value = (0 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(ours[0, :, :, 21], pad_value[:, None].expand(3, 224), atol=1e-6)  # still padding at column 21
    assert (ours[..., 12:212, 22:203] - fast[..., 12:212, 21:202]).abs().max().item() <= FAST_TOL


def test_defaults_and_alias(proc):
    assert DeiTFeatureExtractor is DeiTImageProcessor
    assert proc.size == {"height": 256, "width": 256}
    assert proc.crop_size == {"height": 224, "width": 224}
    assert proc.resample == Image.Resampling.BICUBIC == 3
    assert proc.image_mean == IMAGENET_DEFAULT_MEAN and proc.image_std == IMAGENET_DEFAULT_STD
    assert proc.rescale_factor == 1 / 255
    assert all([proc.do_resize, proc.do_center_crop, proc.do_rescale, proc.do_normalize])
    assert DeiTImageProcessor(size=300, crop_size=(200, 100)).crop_size == {"height": 200, "width": 100}


# --------------------------------------------------------------------------- input formats


def test_pil_numpy_torch_layouts_identical(hopper, proc):
    hwc = np.array(hopper)  # a writable copy, so torch.from_numpy does not warn
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    expected = proc(hopper, return_tensors="np").pixel_values
    for x in (hwc, chw, torch.from_numpy(hwc), torch.from_numpy(chw)):
        np.testing.assert_array_equal(proc(x, return_tensors="np").pixel_values, expected)


def test_float_input_matches_uint8(hopper, proc):
    u8 = np.asarray(hopper)
    expected = proc(u8, return_tensors="np").pixel_values
    # Floats in [0, 1] are already rescaled: they must not be divided by 255 again, and the
    # rounding to 8 bits for Pillow recovers the same levels even with sub-level noise.
    f = u8.astype(np.float32) / 255 + np.float32(0.3 / 255) * (u8 < 255)
    np.testing.assert_array_equal(proc(f, return_tensors="np").pixel_values, expected)
    t = torch.from_numpy(u8.astype(np.float64) / 255).permute(2, 0, 1)
    np.testing.assert_array_equal(proc(t, return_tensors="np").pixel_values, expected)
    # do_rescale=False does not change that (the input is already in [0, 1]).
    np.testing.assert_array_equal(proc(f, return_tensors="np", do_rescale=False).pixel_values, expected)
    # Without resize the float path keeps full precision and still agrees with uint8.
    small = u8[:300, :280]
    a = proc(small, return_tensors="np", do_resize=False).pixel_values
    b = proc(small.astype(np.float32) / 255, return_tensors="np", do_resize=False).pixel_values
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_float_0_255_and_int_arrays(hopper, proc):
    u8 = np.asarray(hopper)
    expected = proc(u8, return_tensors="np").pixel_values
    for x in (u8.astype(np.float32), u8.astype(np.int64), torch.from_numpy(u8.astype(np.int32))):
        np.testing.assert_array_equal(proc(x, return_tensors="np").pixel_values, expected)


def test_sixteen_bit_inputs(hopper, proc):
    gray = np.asarray(hopper.convert("L"))
    expected = proc(hopper.convert("L"), return_tensors="np").pixel_values
    g16 = gray.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    inputs = {
        "uint16 array": g16,
        "I;16 image": Image.fromarray(g16),
        "I image": Image.fromarray(g16.astype(np.int32)),
        "uint16 tensor": torch.from_numpy(g16.astype(np.int32)).to(torch.uint16),
        "rgb uint16": np.repeat(g16[..., None], 3, axis=-1),
    }
    assert inputs["I;16 image"].mode.startswith("I;16") and inputs["I image"].mode == "I"
    for name, x in inputs.items():
        out = proc(x, return_tensors="np").pixel_values
        np.testing.assert_array_equal(out, expected, err_msg=name)
    f_img = Image.fromarray(gray.astype(np.float32) / 255, mode="F")
    np.testing.assert_array_equal(proc(f_img, return_tensors="np").pixel_values, expected)


def test_grayscale_and_alpha_arrays(hopper, proc):
    gray = np.array(hopper.convert("L"))  # writable, for torch.from_numpy
    expected = proc(hopper.convert("L"), return_tensors="np").pixel_values
    for x in (gray, gray[..., None], gray[None], torch.from_numpy(gray)):
        np.testing.assert_array_equal(proc(x, return_tensors="np").pixel_values, expected)
    # Grayscale becomes RGB by repeating the plane: the three channels differ only by mean/std.
    mean = np.array(IMAGENET_DEFAULT_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_DEFAULT_STD, np.float32)[:, None, None]
    levels = expected[0] * std + mean
    np.testing.assert_allclose(levels[0], levels[1], atol=1e-5)
    rgb = np.asarray(hopper)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(proc(rgba, return_tensors="np").pixel_values,
                                  proc(rgb, return_tensors="np").pixel_values)
    la = hopper.convert("LA")
    np.testing.assert_array_equal(proc(la, return_tensors="np").pixel_values, expected)


def test_batches(photos, proc):
    imgs = [im.resize((320, 280)) for im in photos.values()] * 2
    expected = proc(imgs, return_tensors="np").pixel_values
    assert expected.shape == (len(imgs), 3, 224, 224)
    nhwc = np.stack([np.asarray(im) for im in imgs])
    np.testing.assert_array_equal(proc(nhwc, return_tensors="np").pixel_values, expected)
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    np.testing.assert_array_equal(proc(nchw, return_tensors="np").pixel_values, expected)
    for i, im in enumerate(imgs):  # the batch equals the images one by one, in order
        np.testing.assert_array_equal(proc(im, return_tensors="np").pixel_values[0], expected[i])


def test_return_tensors_and_data_format(hopper, proc):
    pt = proc([hopper, hopper], return_tensors="pt").pixel_values
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32 and pt.shape == (2, 3, 224, 224)
    as_np = proc(hopper, return_tensors="np").pixel_values
    assert isinstance(as_np, np.ndarray) and as_np.shape == (1, 3, 224, 224)
    as_list = proc(hopper).pixel_values
    assert isinstance(as_list, list) and len(as_list) == 1
    assert as_list[0].shape == (3, 224, 224) and as_list[0].dtype == np.float32
    last = proc(hopper, return_tensors="pt", data_format="channels_last").pixel_values
    assert last.shape == (1, 224, 224, 3)
    torch.testing.assert_close(last.permute(0, 3, 1, 2), pt[:1], rtol=0, atol=0)
    np.testing.assert_array_equal(as_np, pt[:1].numpy())


def test_per_call_overrides(hopper, proc):
    assert proc(hopper, return_tensors="np", crop_size=100).pixel_values.shape == (1, 3, 100, 100)
    no_crop = proc(hopper, return_tensors="np", do_center_crop=False).pixel_values
    assert no_crop.shape == (1, 3, 256, 256)
    unit = proc(hopper, return_tensors="np", do_normalize=False).pixel_values
    assert unit.dtype == np.float32 and 0 <= unit.min() and unit.max() <= 1
    # Neither rescale nor normalize: the resized and cropped 8-bit pixels, as transformers does.
    raw = proc(hopper, return_tensors="np", do_rescale=False, do_normalize=False).pixel_values
    pil = hopper.resize((256, 256), Image.Resampling.BICUBIC).crop((16, 16, 240, 240))
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[0], np.asarray(pil).transpose(2, 0, 1))
    custom = proc(hopper, return_tensors="np", image_mean=0.5, image_std=0.5).pixel_values
    np.testing.assert_allclose(custom, unit * 2 - 1, atol=1e-6)
    assert proc.crop_size == {"height": 224, "width": 224}  # overrides do not stick


def test_shortest_edge_without_crop_keeps_aspect(hopper, proc, hf_pil):
    kw = {"size": {"shortest_edge": 200}, "do_center_crop": False}
    ours = proc(hopper, **kw).pixel_values[0]
    assert ours.shape == (3, 234, 200)  # 600 * 200 / 512 = 234.4, truncated like transformers
    ref = hf_pil(hopper, **kw).pixel_values[0]
    assert np.abs(ours - ref).max() <= TOL
    with pytest.raises(ValueError, match="different sizes"):
        proc([hopper, hopper.rotate(90, expand=True)], return_tensors="pt", **kw)


def test_path_input(proc):
    path = PHOTO_PATHS[0]
    expected = proc(_load(path), return_tensors="np").pixel_values
    np.testing.assert_array_equal(proc(path, return_tensors="np").pixel_values, expected)
    np.testing.assert_array_equal(proc([Path(path)], return_tensors="np").pixel_values, expected)


def test_batch_feature(hopper, proc):
    out = proc(hopper, return_tensors="pt")
    assert isinstance(out, BatchFeature) and out.pixel_values is out["pixel_values"]
    assert out.to(torch.float16).pixel_values.dtype == torch.float16
    assert out.to("cpu").pixel_values.device.type == "cpu"
    assert out.to(device="cpu", dtype=torch.bfloat16)["pixel_values"].dtype == torch.bfloat16
    with pytest.raises(AttributeError, match="labels"):
        out.labels
    back = pickle.loads(pickle.dumps(out))
    assert isinstance(back, BatchFeature) and torch.equal(back.pixel_values, out.pixel_values)


# --------------------------------------------------------------------------- config files


def test_save_load_round_trip(tmp_path):
    proc = DeiTImageProcessor(size={"shortest_edge": 250}, crop_size=(200, 180), resample=2,
                              image_std=[0.5, 0.5, 0.5], processor_class="SomethingElse")
    files = proc.save_pretrained(tmp_path)
    assert files == [str(tmp_path / "preprocessor_config.json")]
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DeiTImageProcessor"
    assert saved["size"] == {"shortest_edge": 250} and saved["crop_size"] == {"height": 200, "width": 180}
    assert saved["resample"] == 2 and saved["image_std"] == [0.5, 0.5, 0.5]
    assert saved["processor_class"] == "SomethingElse"  # unknown keys are kept
    assert os.listdir(tmp_path) == ["preprocessor_config.json"]  # no temp file left behind
    assert DeiTImageProcessor.from_pretrained(tmp_path) == proc
    assert DeiTImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json") == proc
    assert DeiTImageProcessor.from_dict(saved, crop_size=100).crop_size == {"height": 100, "width": 100}
    proc.save_pretrained(tmp_path)  # overwriting works too
    assert os.listdir(tmp_path) == ["preprocessor_config.json"]


def test_old_feature_extractor_file(tmp_path, hopper, proc):
    # The layout of the original facebook/deit-* preprocessor_config.json files.
    old = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
           "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": list(IMAGENET_DEFAULT_MEAN),
           "image_std": list(IMAGENET_DEFAULT_STD), "resample": 3, "size": 256}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old))
    loaded = DeiTFeatureExtractor.from_pretrained(tmp_path)
    assert loaded == proc
    assert "feature_extractor_type" not in loaded.to_dict()


@pytest.mark.parametrize("hf_cls_name", ["pil", "fast"])
def test_config_interop_with_transformers(tmp_path, photos, hf_cls_name):
    hf_cls = HFPil if hf_cls_name == "pil" else HFFast
    levels = 1 if hf_cls_name == "pil" else 2  # see TOL / FAST_TOL
    if hf_cls is None:
        pytest.skip("no torchvision DeiT processor in this transformers")
    imgs = list(photos.values())
    # transformers writes, we read.
    hf = hf_cls(size={"height": 288, "width": 260}, crop_size=240, image_mean=[0.4, 0.5, 0.6],
                image_std=[0.2, 0.3, 0.25])
    hf.save_pretrained(tmp_path / "hf")
    ours = DeiTImageProcessor.from_pretrained(tmp_path / "hf")
    assert ours.size == {"height": 288, "width": 260} and ours.crop_size == {"height": 240, "width": 240}
    a = ours(imgs, return_tensors="pt").pixel_values
    b = hf(imgs, return_tensors="pt").pixel_values
    assert a.shape == b.shape == (len(imgs), 3, 240, 240)
    assert (a - b).abs().max().item() <= levels / 255 / 0.2 + 1e-5  # levels for min(std) = 0.2
    # We write, transformers reads.
    mine = DeiTImageProcessor(size=300, crop_size={"height": 256, "width": 200}, resample="bilinear")
    mine.save_pretrained(tmp_path / "ours")
    theirs = hf_cls.from_pretrained(tmp_path / "ours")
    a = mine(imgs, return_tensors="pt").pixel_values
    b = theirs(imgs, return_tensors="pt").pixel_values
    assert a.shape == b.shape == (len(imgs), 3, 256, 200)
    assert (a - b).abs().max().item() <= levels * ONE_LEVEL + 1e-5


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(hopper, proc):
    good = np.asarray(hopper)[:64, :64]
    with pytest.raises(ValueError, match=r"images\[1\].*shape \(64, 64, 5\).*got 64 and 5"):
        proc([good, np.zeros((64, 64, 5), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*\(2, 64, 64\).*got 2 and 64"):
        proc([np.zeros((2, 64, 64), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*5 channels on its channels_last axis"):
        proc([np.zeros((4, 64, 5), np.uint8)], input_data_format="channels_last")
    with pytest.raises(ValueError, match=r"images: expected a 2-D/3-D image or a 4-D batch.*\(64,\)"):
        proc(np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match=r"images\[1\]\[0\].*got 7 and 7"):  # item 0 of a 4-D batch
        proc([good, np.zeros((3, 7, 7, 7), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[1\]\[2\].*got 64 and 2"):  # nested lists
        proc([good, [good, good, np.zeros((64, 64, 2), np.uint8)]])
    with pytest.raises(ValueError, match="images: empty list of images"):
        proc([])
    with pytest.raises(TypeError, match=r"images\[2\]: expected a PIL image.*got object"):
        proc([good, good, object()])
    with pytest.raises(TypeError, match=r"images: expected a PIL image.*got dict"):
        proc({"pixel_values": good})
    with pytest.raises(ValueError, match=r"images\[0\]: image file '/no/such/photo.jpg' does not exist"):
        proc(["/no/such/photo.jpg"])
    with pytest.raises(ValueError, match=r"images: float pixel values must lie in \[0, 1\].*\[-1, 1\]"):
        proc(np.linspace(-1, 1, 300, dtype=np.float32).reshape(10, 10, 3))
    with pytest.raises(ValueError, match=r"images: integer pixel values .* got \[-3, -3\]"):
        proc(np.full((8, 8), -3, np.int32))
    with pytest.raises(ValueError, match=r"images: float image contains NaN"):
        proc(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="return_tensors must be 'pt', 'np', 'tf', 'jax' or None, got 'mlx'"):
        proc(good, return_tensors="mlx")
    with pytest.raises(TypeError, match="unexpected keyword argument 'do_flip'"):
        proc(good, do_flip=True)


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="size must be an int"):
        DeiTImageProcessor(size={"longest_edge": 3})
    with pytest.raises(ValueError, match="crop_size must be an int"):
        DeiTImageProcessor(crop_size={"shortest_edge": 3})
    with pytest.raises(ValueError, match=r"size\['height'\] must be a positive int"):
        DeiTImageProcessor(size={"height": 0, "width": 4})
    with pytest.raises(ValueError, match="image_mean must have 3 values"):
        DeiTImageProcessor(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="image_std must not contain zeros"):
        DeiTImageProcessor(image_std=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="resample"):
        DeiTImageProcessor(resample=17)
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json in this folder"):
        DeiTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        DeiTImageProcessor.from_pretrained(tmp_path / "broken.json")
