"""deit.images, issue 28 item 1: one way from a file to pixels.

A phone photo stored sideways with an EXIF Orientation tag must reach the model upright and
with the same ``pixel_values`` through every path: the image processor, ``deit predict``'s batch
loader, ``deit eval``'s transform, ``deit attention`` and a training run's validation
transform; and for a checkpoint without a ``preprocessor_config.json`` all of them apply the
one evaluation resize rule (shorter side to size / 0.875, centre crop). The reference for the
upright pixels is transformers: its ``load_image`` (which applies EXIF orientation) and its PIL
backend processor with the same settings.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import deit
from deit.images import IMAGE_SUFFIXES, ImageReadError, eval_sizes, open_image, open_rgb, read_image
from deit.loading import expand_inputs, load_batches, to_model_input
from deit.processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DeiTImageProcessor
from journey_fixtures import IMAGE_SIZE, photograph, tiny_deit

ORIENTATION = 0x0112
# Stored 60 wide x 45 tall; Orientation 6 says "rotate 90 degrees clockwise to view": upright it
# is 45 wide x 60 tall. Non-square, so a missed rotation changes the crop, not just the order.
STORED_SIZE = (60, 45)


def exif_rotated_jpeg(path, orientation: int = 6):
    """A photograph saved sideways with an EXIF Orientation tag, as phones write them."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    photograph().resize(STORED_SIZE, Image.Resampling.BICUBIC).save(path, quality=92, exif=exif)
    return path


@pytest.fixture
def rotated_photo_tree(tmp_path):
    """A checkpoint folder without preprocessor_config.json, and a train/ + val/ ImageFolder
    whose one validation image is the EXIF-rotated photo (the training images are plain)."""
    model = tiny_deit()
    model.save_pretrained(tmp_path / "model")
    root = tmp_path / "data"
    for name in model.config.id2label.values():
        (root / "train" / name).mkdir(parents=True)
        photograph().resize((40, 30)).save(root / "train" / name / "plain.jpg")
    (root / "val" / model.config.id2label[0]).mkdir(parents=True)
    photo = exif_rotated_jpeg(root / "val" / model.config.id2label[0] / "phone.jpg")
    return tmp_path / "model", root, photo


def upright_reference(path) -> torch.Tensor:
    """transformers: load_image (EXIF applied), then its PIL-backend processor with the rule."""
    transformers = pytest.importorskip("transformers")
    from transformers.image_utils import load_image

    size, crop_size = eval_sizes(IMAGE_SIZE)
    processor = transformers.DeiTImageProcessorPil(size=size, crop_size=crop_size, image_mean=list(IMAGENET_DEFAULT_MEAN),
                                                   image_std=list(IMAGENET_DEFAULT_STD))
    return processor(load_image(str(path)), return_tensors="pt")["pixel_values"]


class Recorder(torch.nn.Module):
    """Stands in for the model a command runs: records the pixel values it is given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.seen: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        self.seen.append(pixel_values.detach().clone())
        return self.model(pixel_values, **kwargs)


def through_predict(model_dir, photo, monkeypatch) -> torch.Tensor:
    from deit.commands import predict

    recorders = []
    # (``deit.optimize`` the attribute is the function; the module is found by its import name.)
    monkeypatch.setattr(importlib.import_module("deit.optimize"), "optimize", lambda model, **_: recorders.append(Recorder(model)) or recorders[-1])
    args = argparse.Namespace(images=[str(photo)], model=str(model_dir), top_k=1, json=True, batch_size=4, device="cpu",
                              dtype="fp32", backend="auto", workers=0, threads=1, resize="pil", draft=False)
    assert predict.run(args) == 0
    return torch.cat(recorders[0].seen)


def through_eval(model_dir, root, monkeypatch) -> torch.Tensor:
    from deit.commands import eval as eval_command

    batches = []

    def record(model, loader, **kwargs):
        batches.extend(images for images, _ in (b for b in loader if b is not None))
        return {"num_samples": sum(len(b) for b in batches), "acc1": 0.0}

    monkeypatch.setattr("deit.train.evaluate.evaluate", record)
    monkeypatch.setattr(importlib.import_module("deit.optimize"), "optimize", lambda model, **_: model)  # (pixels are what is tested)
    args = argparse.Namespace(model=str(model_dir), data=str(root), split="val", batch_size=4, transform="authors", crop_pct=0.875,
                              interpolation="bicubic", num_workers=0, device="cpu", dtype="fp32", backend="auto", json=True)
    assert eval_command.run(args) == 0
    return torch.cat(batches)


def through_attention(model_dir, photo, tmp_path, monkeypatch) -> torch.Tensor:
    import deit.explain
    from deit.commands import attention

    seen = []
    explain = deit.explain.explain

    def record(model, pixel_values, **kwargs):
        seen.append(pixel_values.detach().clone())
        return explain(model, pixel_values, **kwargs)

    monkeypatch.setattr("deit.explain.explain", record)
    monkeypatch.setattr("deit.explain.render", lambda *args, **kwargs: None)
    args = argparse.Namespace(images=[str(photo)], model=str(model_dir), out=str(tmp_path / "maps"), method="rollout", token="both",
                              head=None, device="cpu")
    assert attention.run(args) == 0
    return torch.cat(seen)


def through_training_validation(root) -> torch.Tensor:
    from deit.train.loaders import build_datasets
    from deit.train.recipe import TrainConfig

    _, val_set = build_datasets(TrainConfig(data=str(root)), IMAGE_SIZE)
    return torch.stack([val_set[i][0] for i in range(len(val_set))])


def test_an_exif_rotated_photo_gives_the_same_upright_pixels_through_every_path(rotated_photo_tree, tmp_path, monkeypatch, capsys):
    model_dir, root, photo = rotated_photo_tree
    with Image.open(photo) as stored:
        assert stored.size == STORED_SIZE and stored.getexif()[ORIENTATION] == 6
    expected = upright_reference(photo)
    processor = DeiTImageProcessor.for_model(model_dir, IMAGE_SIZE)
    paths = {
        "processor": processor(str(photo), return_tensors="pt")["pixel_values"],
        "deit predict": through_predict(model_dir, photo, monkeypatch),
        "deit eval": through_eval(model_dir, root, monkeypatch),
        "deit attention": through_attention(model_dir, photo, tmp_path, monkeypatch),
        "training validation": through_training_validation(root),
    }
    capsys.readouterr()
    # Without the rotation the crop would come from a landscape image: far from the reference.
    sideways = processor(Image.open(photo).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert (sideways - expected).abs().max() > 1.0
    for name, pixel_values in paths.items():
        assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE), name
        assert torch.equal(pixel_values, expected), f"{name}: largest difference {(pixel_values - expected).abs().max():.4g}"


def test_every_exif_orientation_comes_out_upright(tmp_path):
    """The eight EXIF orientations of one stored image, each against the transpose that undoes it."""
    upright = np.asarray(open_image(exif_rotated_jpeg(tmp_path / "1.jpg", orientation=1)))
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for orientation, transpose in undo.items():
        image = open_image(exif_rotated_jpeg(tmp_path / f"{orientation}.jpg", orientation=orientation))
        assert np.array_equal(np.asarray(image), np.asarray(Image.fromarray(upright).transpose(transpose))), orientation


def mode_files(folder):
    """One file per mode that needs the mode policy, and what each must come out as (8-bit)."""
    photo = photograph().resize((40, 30))
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint32) * 257).astype(np.uint16)  # 8-bit levels spread to 16 bits
    files = {
        "gray16.png": (Image.fromarray(gray16), np.asarray(photo.convert("L"))),
        "cmyk.jpg": (photo.convert("CMYK"), None),
        "palette.png": (photo.quantize(16), None),
        "la.png": (photo.convert("LA"), np.asarray(photo.convert("L"))),
    }
    palette = photo.quantize(16)
    palette.info["transparency"] = 3
    files["palette_transparent.png"] = (palette, np.asarray(photo.quantize(16).convert("RGB")))
    for name, (image, _) in files.items():
        image.save(folder / name)
    return {folder / name: expected for name, (_, expected) in files.items()}


def test_the_mode_policy_is_the_same_for_the_processor_the_loader_and_the_data_sets(tmp_path):
    """16-bit grayscale maps 0..65535 to 0..255 (before, the training data sets clipped it to
    white), CMYK and palettes convert through Pillow, grayscale + alpha drops the alpha."""
    from deit.train.data import ImageFolderDataset

    (tmp_path / "modes" / "a").mkdir(parents=True)
    expected = mode_files(tmp_path / "modes" / "a")
    for path, pixels in expected.items():
        with Image.open(path) as image:
            reference = np.asarray(image.convert("RGB") if pixels is None else Image.fromarray(pixels).convert("RGB"))
        assert np.array_equal(np.asarray(open_rgb(path)), reference), path.name
    dataset = ImageFolderDataset(tmp_path / "modes", "all")
    for i, (path, _) in enumerate(dataset.samples):
        assert np.array_equal(np.asarray(dataset.load_image(i)), np.asarray(open_rgb(path))), path.name
    processor = DeiTImageProcessor(size={"shortest_edge": 20}, crop_size=16)
    paths = [path for path, _ in dataset.samples]
    loaded = torch.cat([to_model_input(batch.pixels, processor) for batch in load_batches(paths, processor, batch_size=8, num_workers=0)])
    assert torch.equal(loaded, processor([str(p) for p in paths], return_tensors="pt")["pixel_values"])
    assert torch.equal(loaded, processor([open_rgb(p) for p in paths], return_tensors="pt")["pixel_values"])


def test_bytes_and_file_objects_read_as_the_path_does(tmp_path):
    photo = exif_rotated_jpeg(tmp_path / "phone.jpg")
    data = photo.read_bytes()
    by_path = np.asarray(open_image(photo))
    assert np.array_equal(np.asarray(open_image(data)), by_path)
    assert np.array_equal(np.asarray(open_image(io.BytesIO(data))), by_path)


def test_unreadable_files_name_the_file_and_the_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    data = exif_rotated_jpeg(tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cases = {tmp_path / "notes.jpg": "not an image file", tmp_path / "missing.png": "file does not exist",
             tmp_path / "cut.jpg": "truncated"}
    for path, reason in cases.items():
        with pytest.raises(ImageReadError, match=str(path.name)) as caught:
            read_image(path)
        assert reason in caught.value.reason and isinstance(caught.value, ValueError)
    with pytest.raises(ImageReadError, match="the given bytes.*not an image file"):
        read_image(b"GIF89a but not really")


def test_one_suffix_list_for_predict_and_the_data_sets(tmp_path):
    """deit predict's folders and the training data sets take the same files (before, .pbm was
    only an image to the data sets)."""
    from deit.train.data import ImageFolderDataset

    (tmp_path / "a").mkdir()
    photo = photograph().resize((20, 16))
    for suffix in IMAGE_SUFFIXES:
        photo.convert("1" if suffix == ".pbm" else "L" if suffix == ".pgm" else "RGB").save(tmp_path / "a" / f"image{suffix.upper()}")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, "all")
    assert sorted(expand_inputs([tmp_path])) == sorted(path for path, _ in dataset.samples)
    assert len(dataset) == len(IMAGE_SUFFIXES)


def test_the_written_preprocessor_config_is_the_rule(tmp_path):
    """A trained checkpoint's preprocessor_config.json and a checkpoint without one resize alike."""
    from deit.train.checkpointing import save_hf_model

    save_hf_model(tiny_deit(), tmp_path / "trained", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875)
    written = json.loads((tmp_path / "trained" / "preprocessor_config.json").read_text())
    size, crop_size = eval_sizes(IMAGE_SIZE)
    assert written["size"] == size == {"shortest_edge": 36} and written["crop_size"] == crop_size
    tiny_deit().save_pretrained(tmp_path / "bare")
    assert DeiTImageProcessor.from_pretrained(tmp_path / "trained") == DeiTImageProcessor.for_model(tmp_path / "bare", IMAGE_SIZE)
    assert deit.DeiTImageProcessor.for_eval(IMAGE_SIZE) == DeiTImageProcessor.for_model(tmp_path / "bare", IMAGE_SIZE)
