"""Data sets: mnist5k's fixed split, both ImageFolder layouts, datasets save_to_disk folders, and
bad input (missing/empty/unreadable folders, empty class folders, corrupt images)."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deit.train.data import (
    CorruptImageWarning,
    HFDiskDataset,
    ImageFolderDataset,
    Mnist5k,
    build_dataset,
    collate_readable,
    count_corrupt,
    default_eval_split,
)
from deit.train.transforms import build_eval_transform

TO_TENSOR = build_eval_transform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)


def write_png(path: Path, value: int, size: int = 10) -> None:
    """A small solid-colour PNG whose red channel encodes ``value`` (to identify it after loading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(path)


def red(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


def make_tree(root: Path, classes: dict[str, int], start: int = 0) -> dict[int, str]:
    """``root/<class>/<i>.png`` with distinct red values; returns {red value: class}."""
    owner = {}
    value = start
    for name, count in classes.items():
        for i in range(count):
            write_png(root / name / f"{i:03d}.png", value)
            owner[value] = name
            value += 1
    return owner


# ------------------------------------------------------------------------------ mnist5k
@pytest.fixture(scope="module")
def mnist() -> tuple[Mnist5k, Mnist5k]:
    return build_dataset("mnist5k", "train"), build_dataset("mnist5k", "val")


def test_mnist5k_split_sizes_and_classes(mnist):
    train, val = mnist
    assert (len(train), len(val)) == (4000, 1000)
    assert train.classes == val.classes == [str(d) for d in range(10)] and train.num_classes == 10
    assert Counter(train.targets) == {c: 400 for c in range(10)}
    assert Counter(val.targets) == {c: 100 for c in range(10)}
    image, label = val[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert isinstance(label, int)


def test_mnist5k_split_is_the_documented_one_and_disjoint(mnist):
    from deit.train.data import mnist5k_file

    with gzip.open(mnist5k_file()) as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    train, val = mnist
    # Every fifth image of each class (positions 4, 9, ...) is validation.
    zeros = table[table[:, -1] == 0, :-1]
    assert np.array_equal(np.asarray(val[0][0])[:, :, 0], zeros[4].reshape(28, 28))
    assert np.array_equal(np.asarray(val[1][0])[:, :, 0], zeros[9].reshape(28, 28))
    assert np.array_equal(np.asarray(train[4][0])[:, :, 0], zeros[5].reshape(28, 28))
    train_rows = {train._pixels[i].tobytes() for i in range(len(train))}
    val_rows = {val._pixels[i].tobytes() for i in range(len(val))}
    assert len(train_rows | val_rows) == 5000 and not train_rows & val_rows


def test_mnist5k_is_deterministic_and_resizes_once(mnist):
    again = build_dataset("mnist5k", "val", image_size=32)
    assert again.targets == mnist[1].targets
    assert again[0][0].size == (32, 32)


# --------------------------------------------------------------------------- ImageFolder
def test_imagefolder_train_val_layout(tmp_path):
    owner = make_tree(tmp_path / "train", {"cat": 3, "dog": 2})
    owner.update(make_tree(tmp_path / "val", {"cat": 1, "dog": 1}, start=100))
    train = build_dataset(str(tmp_path), "train")
    val = build_dataset(str(tmp_path), "val", TO_TENSOR)
    assert isinstance(train, ImageFolderDataset)
    assert train.classes == val.classes == ["cat", "dog"]
    assert len(train) == 5 and len(val) == 2
    for image, label in (train[i] for i in range(len(train))):
        assert train.classes[label] == owner[red(image)]
    pixels, label = val[1]
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32 and label == 1


def test_imagefolder_validation_class_unknown_to_training(tmp_path):
    make_tree(tmp_path / "train", {"cat": 2})
    make_tree(tmp_path / "val", {"cat": 1, "cow": 1})
    assert len(build_dataset(str(tmp_path), "train")) == 2
    with pytest.raises(ValueError, match="cow"):
        build_dataset(str(tmp_path), "val")


def test_imagefolder_single_tree_is_split_90_10_per_class(tmp_path):
    owner = make_tree(tmp_path, {"a": 20, "b": 10, "c": 1})
    train = build_dataset(str(tmp_path), "train")
    val = build_dataset(str(tmp_path), "val")
    assert train.classes == val.classes == ["a", "b", "c"]
    assert Counter(train.targets) == {0: 18, 1: 9, 2: 1} and Counter(val.targets) == {0: 2, 1: 1}
    train_files = {s[0] for s in train.samples}
    val_files = {s[0] for s in val.samples}
    assert not train_files & val_files and len(train_files | val_files) == 31
    # Fixed per class name: the same files again, and adding a class does not move the others.
    assert {s[0] for s in build_dataset(str(tmp_path), "val").samples} == val_files
    make_tree(tmp_path, {"d": 5}, start=200)
    assert {s[0] for s in build_dataset(str(tmp_path), "val").samples if s[0].parent.name != "d"} == val_files
    for image, label in (train[i] for i in range(len(train))):
        assert train.classes[label] == owner[red(image)]


def test_split_all_and_a_val_folder_alone(tmp_path):
    """Issue 24 item 5: a folder of class folders is a test set for ``deit eval`` (every image), and a
    tree with a val/ folder only is its validation split, not one class called "val"."""
    make_tree(tmp_path / "plain", {"a": 20, "b": 10})
    assert len(build_dataset(str(tmp_path / "plain"), "all")) == 30 and default_eval_split(str(tmp_path / "plain")) == "all"
    make_tree(tmp_path / "valonly" / "val", {"a": 2, "b": 3})
    val = build_dataset(str(tmp_path / "valonly"), "val")
    assert val.classes == ["a", "b"] and len(val) == 5 and default_eval_split(str(tmp_path / "valonly")) == "val"
    with pytest.raises(ValueError, match="no train/ folder"):
        build_dataset(str(tmp_path / "valonly"), "train")
    make_tree(tmp_path / "split" / "train", {"a": 3, "b": 2})
    make_tree(tmp_path / "split" / "val", {"a": 1}, start=100)
    assert len(build_dataset(str(tmp_path / "split"), "all")) == 6 and default_eval_split(str(tmp_path / "split")) == "val"
    assert default_eval_split("mnist5k") == "val"


# ----------------------------------------------------------------------------- datasets
def hf_table(values: list[int], labels: list[int], names: list[str], image_col: str = "image", label_col: str = "label"):
    import datasets

    images = [Image.new("RGB", (6, 6), (v, 0, 0)) for v in values]
    features = datasets.Features({image_col: datasets.Image(), label_col: datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({image_col: images, label_col: labels}, features=features)


def test_hf_dataset_dict_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({
        "train": hf_table([10, 20, 30], [0, 1, 1], ["x", "y"]),
        "validation": hf_table([40, 50], [1, 0], ["x", "y"]),
    })
    splits.save_to_disk(str(tmp_path / "ds"))
    train = build_dataset(f"hf:{tmp_path / 'ds'}", "train")
    val = build_dataset(str(tmp_path / "ds"), "val")  # recognised without the prefix
    assert isinstance(train, HFDiskDataset) and isinstance(val, HFDiskDataset)
    assert train.classes == ["x", "y"] and train.targets == [0, 1, 1] and val.targets == [1, 0]
    image, label = val[0]
    assert image.mode == "RGB" and red(image) == 40 and label == 1


def test_hf_single_dataset_other_column_names_is_split_per_class(tmp_path):
    pytest.importorskip("datasets")
    values = list(range(0, 200, 10))
    hf_table(values, [i % 2 for i in range(20)], ["even", "odd"], image_col="img", label_col="labels").save_to_disk(str(tmp_path / "one"))
    train = build_dataset(f"hf:{tmp_path / 'one'}", "train")
    val = build_dataset(f"hf:{tmp_path / 'one'}", "val")
    assert Counter(train.targets) == {0: 9, 1: 9} and Counter(val.targets) == {0: 1, 1: 1}
    seen = [red(train[i][0]) for i in range(len(train))] + [red(val[i][0]) for i in range(len(val))]
    assert sorted(seen) == values


def test_hf_without_datasets_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match="pip install"):
        build_dataset(f"hf:{tmp_path}", "train")


# ---------------------------------------------------------------------------- bad input
def test_missing_empty_and_non_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(str(tmp_path / "nowhere"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}.*no class folders"):
        build_dataset(str(tmp_path / "empty"), "train")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_dataset(str(tmp_path / "file.txt"), "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("mnist5k", "test")


def test_class_folder_without_images_is_an_error(tmp_path):
    make_tree(tmp_path, {"a": 3})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=f"no images.*{tmp_path / 'b'}"):
        build_dataset(str(tmp_path), "train")


@pytest.mark.parametrize("level", ["root", "class"])
def test_unreadable_folder_is_named(tmp_path, monkeypatch, level):
    make_tree(tmp_path / "data", {"a": 2, "b": 2})
    locked = tmp_path / "data" / ("b" if level == "class" else "")
    if os.name == "posix" and os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: make listing the folder fail as it would for a user
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        with pytest.raises(ValueError, match=f"{locked}.*not readable"):
            build_dataset(str(tmp_path / "data"), "train")
    finally:
        locked.chmod(0o755)


def corrupt_tree(root: Path) -> Path:
    make_tree(root / "train", {"a": 4, "b": 4})
    make_tree(root / "val", {"a": 1, "b": 1})
    bad = root / "train" / "a" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    return bad


def test_corrupt_image_is_skipped_replaced_and_counted(tmp_path):
    bad = corrupt_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "train")
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path == bad)
    with pytest.warns(CorruptImageWarning, match="001.png"):
        image, label = dataset[index]
    # Replaced by the next readable sample.
    assert red(image) == red(dataset[index + 1][0]) and label == dataset.targets[index + 1]
    assert dataset.num_corrupt == 1 and dataset.corrupt_files() == [str(bad)]
    assert count_corrupt(dataset) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; a flagged file is not read again
        dataset[index]


def test_corrupt_image_left_out_for_evaluation(tmp_path):
    """Issue 24 item 4: with ``replace_corrupt = False`` a corrupt sample is None and the collate
    drops it, so no other image takes its place (and is counted twice)."""
    bad = corrupt_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "train", TO_TENSOR)
    dataset.replace_corrupt = False
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path == bad)
    with pytest.warns(CorruptImageWarning, match="left out"):
        assert dataset[index] is None
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_readable)
    batches = [batch for batch in loader if batch is not None]
    assert sum(len(labels) for _, labels in batches) == len(dataset) - 1
    assert collate_readable([None, None]) is None


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_corrupt_images_met_in_dataloader_workers_are_counted_in_the_main_process(tmp_path, context):
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} start method here")
    corrupt_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "train", TO_TENSOR)
    assert len(dataset) == 8
    loader = DataLoader(dataset, batch_size=4, num_workers=2 if context == "fork" else 1, multiprocessing_context=context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == len(dataset)  # nothing dropped
    assert dataset.num_corrupt == 1


def test_all_images_corrupt_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"junk")
        (tmp_path / name / "y.png").write_bytes(b"junk")
    dataset = build_dataset(str(tmp_path), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        with pytest.raises(RuntimeError, match="all 2 images are corrupt"):
            dataset[0]
