"""deit.loading: batched loading from files gives the image processor's tensors.

The default output must equal DeiTImageProcessor's exactly (same Pillow resize, same lookup
table) and transformers' PIL-backend processor within one 8-bit level; ``draft`` decoding of
a large JPEG must stay within a few levels on average.
"""

from __future__ import annotations

import matplotlib.cbook
import pytest
import torch
from PIL import Image

import deit
from deit.bench.loading import level_difference
from deit.loading import expand_inputs, load_batches, output_names, to_model_input


@pytest.fixture
def files(tmp_path):
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    paths = [tmp_path / "hopper.jpg", tmp_path / "gray.png", tmp_path / "broken.jpg", tmp_path / "rgba.png", tmp_path / "wide.jpg"]
    photo.save(paths[0], quality=92)
    photo.convert("L").resize((300, 200)).save(paths[1])
    paths[2].write_text("not an image")
    photo.convert("RGBA").resize((180, 240)).save(paths[3])
    photo.resize((700, 300)).save(paths[4])
    return paths


def load_all(paths, processor, **kwargs):
    pixels, order, failures = [], [], []
    for batch in load_batches(paths, processor, batch_size=2, **kwargs):
        if batch.indices:
            pixels.append(to_model_input(batch.pixels, processor))
        order += batch.indices
        failures += batch.failures
    return torch.cat(pixels), order, failures


@pytest.mark.parametrize("workers", [0, 2])
def test_same_tensors_as_the_processor_in_order_with_failures_named(files, workers):
    processor = deit.DeiTImageProcessor()
    pixels, order, failures = load_all(files, processor, num_workers=workers)
    good = [0, 1, 3, 4]
    assert order == good
    assert [index for index, _ in failures] == [2] and failures[0][1] == "not an image file"
    expected = processor([str(files[i]) for i in good], return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, expected)


def test_within_one_level_of_transformers_pil_processor(files):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.DeiTImageProcessorPil(image_mean=list(deit.processing.IMAGENET_DEFAULT_MEAN), image_std=list(deit.processing.IMAGENET_DEFAULT_STD))
    good = [files[i] for i in (0, 1, 3, 4)]
    pixels, _, _ = load_all(good, deit.DeiTImageProcessor())
    expected = theirs([Image.open(p).convert("RGB") for p in good], return_tensors="pt")["pixel_values"]
    worst, _ = level_difference(pixels, expected)
    assert worst <= 1.0


def test_draft_decodes_large_jpegs_smaller_with_a_small_error(tmp_path):
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    path = tmp_path / "large.jpg"
    photo.resize((1200, 1400), Image.Resampling.BICUBIC).save(path, quality=92)
    with Image.open(path) as img:  # what the loader asks the decoder for: >= 256 on both sides
        img.draft("RGB", (256, 256))
        assert img.size == (300, 350)
    processor = deit.DeiTImageProcessor()
    full, _, _ = load_all([path], processor)
    draft, _, _ = load_all([path], processor, draft=True)
    _, mean = level_difference(draft, full)
    assert 0 < mean < 3.0


def test_model_input_dtype_and_device(files):
    processor = deit.DeiTImageProcessor()
    batch = next(iter(load_batches(files[:1], processor)))
    values = to_model_input(batch.pixels, processor, device="cpu", dtype=torch.bfloat16)
    assert values.dtype == torch.bfloat16 and values.shape == (1, 3, 224, 224)


def test_torch_resize_matches_transformers_default_processor(files):
    transformers = pytest.importorskip("transformers")
    stats = dict(image_mean=list(deit.processing.IMAGENET_DEFAULT_MEAN), image_std=list(deit.processing.IMAGENET_DEFAULT_STD))
    good = [files[i] for i in (0, 1, 3, 4)]
    pixels, _, _ = load_all(good, deit.DeiTImageProcessor(), resize="torch")
    expected = transformers.DeiTImageProcessor(**stats)([Image.open(p).convert("RGB") for p in good], return_tensors="pt")["pixel_values"]
    worst, _ = level_difference(pixels, expected)
    assert worst <= 1.0


def test_torch_resize_path_crops_and_zero_pads_as_the_pillow_path(files):
    """Without a resize both kernels see the same decoded pixels, so their center crops must be
    equal exactly, including the zero padding where the crop is larger than the image."""
    processor = deit.DeiTImageProcessor(do_resize=False, crop_size={"height": 260, "width": 250})
    good = [files[i] for i in (1, 3)]  # 300x200 grayscale, 180x240 RGBA: padded and cropped
    torch_pixels, _, _ = load_all(good, processor, resize="torch")
    pil_pixels, _, _ = load_all(good, processor, resize="pil")
    assert torch.equal(torch_pixels, pil_pixels)


@pytest.mark.parametrize("resize", ["pil", "torch"])
def test_grayscale_and_rgba_processors_load_as_the_processor_does(files, resize):
    """Issue 28: the loader follows the processor's channel count (one per image_mean value), as
    the processor does: 1 keeps grayscale images, 4 keeps RGBA images, and an image that does
    not fit is a named failure (the processor refuses it too), not a wrong tensor."""
    for mean, fits, misfit in (([0.5], files[1], files[0]), ([0.5, 0.4, 0.3, 0.2], files[3], files[1])):
        processor = deit.DeiTImageProcessor(image_mean=mean, image_std=[0.25] * len(mean))
        pixels, order, failures = load_all([fits, misfit], processor, resize=resize)
        assert order == [0] and [index for index, _ in failures] == [1] and "channel" in failures[0][1]
        expected = processor(str(fits), return_tensors="pt")["pixel_values"]
        assert pixels.shape[1] == len(mean)
        if resize == "pil":
            assert torch.equal(pixels, expected)
        else:
            # torchvision's bicubic against Pillow's: at most one 8-bit level (plus float rounding).
            assert level_difference(pixels, expected, std=[0.25] * len(mean))[0] <= 1.0 + 1e-4
        with pytest.raises(ValueError, match="channel"):
            processor(str(misfit))


def test_simplejpeg_decode_gives_pillows_pixels_and_leaves_other_files_to_pillow(tmp_path, monkeypatch):
    """The simplejpeg path must decode exactly as Pillow does (0 levels), and must not be used
    where it would differ: EXIF-rotated, CMYK, non-JPEG, truncated files."""
    pytest.importorskip("simplejpeg")
    import numpy as np

    from deit.images import _decode_plain_jpeg

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    cases = {
        "420.jpg": dict(quality=90),
        "444.jpg": dict(quality=95, subsampling=0),
        "422.jpg": dict(quality=75, subsampling=1),
        "progressive.jpg": dict(quality=85, progressive=True),
        "odd.jpg": dict(quality=80),
    }
    for name, options in cases.items():
        image = photo.resize((333, 257)) if name == "odd.jpg" else photo
        image.save(tmp_path / name, **options)
    photo.convert("L").save(tmp_path / "gray.jpg", quality=90)
    for name in [*cases, "gray.jpg"]:
        decoded = _decode_plain_jpeg(str(tmp_path / name))
        with Image.open(tmp_path / name) as img:
            assert decoded is not None and np.array_equal(decoded, np.asarray(img)), name

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    photo.save(tmp_path / "photo.png")
    for name in ("rotated.jpg", "cmyk.jpg", "photo.png"):
        assert _decode_plain_jpeg(str(tmp_path / name)) is None, name

    data = (tmp_path / "420.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        _decode_plain_jpeg(str(tmp_path / "truncated.jpg"))

    # Through the loader: the same tensors as with Pillow alone, rotation applied, failure named.
    paths = [tmp_path / n for n in ("420.jpg", "gray.jpg", "rotated.jpg", "cmyk.jpg", "truncated.jpg")]
    processor = deit.DeiTImageProcessor()
    pixels, order, failures = load_all(paths, processor, resize="torch")
    monkeypatch.setattr("deit.images._simplejpeg", lambda: None)
    pillow_pixels, pillow_order, _ = load_all(paths[:4], processor, resize="torch")
    assert order == pillow_order == [0, 1, 2, 3] and [i for i, _ in failures] == [4]
    assert torch.equal(pixels, pillow_pixels)


def test_inputs_expand_once_and_name_their_outputs_by_the_path_under_the_common_folder(tmp_path):
    """Issue 24, item 6: one naming rule for every per-input output."""
    for relative in ("photos/phone/IMG_0001.jpg", "photos/camera/IMG_0001.jpg", "photos/camera/old/IMG_0001.JPG", "photos/camera/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    phone = tmp_path / "photos" / "phone" / "IMG_0001.jpg"
    paths = expand_inputs([phone, tmp_path / "photos", str(phone)])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "photos/phone/IMG_0001.jpg", "photos/camera/IMG_0001.jpg", "photos/camera/old/IMG_0001.JPG",
    ]
    assert output_names(paths) == ["phone/IMG_0001.jpg", "camera/IMG_0001.jpg", "camera/old/IMG_0001.JPG"]
    # From one folder: the file names, as before; one file: its name.
    assert output_names(paths[1:2]) == ["IMG_0001.jpg"]
    assert output_names([tmp_path / "a.jpg", tmp_path / "b.jpg"]) == ["a.jpg", "b.jpg"]
    assert output_names([]) == []
